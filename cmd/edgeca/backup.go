package main

import (
	"context"
	"fmt"
	"io"

	"github.com/edgeagent/edgeagent/ca"
)

func cmdBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, dir := newFlags("backup")
	out := fs.String("out", "", "directory to write the backup to (must not exist or be empty)")
	asJSON := fs.Bool("json", false, "print the manifest as JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: backup needs --out DIR", errUsage)
	}
	m, err := ca.Backup(ctx, *dir, *out, ca.BackupOptions{DB: dbOf(fs)})
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, m)
	}
	fmt.Fprintf(stderr, "backup of %s (%s store) in %s: %d files, root %s\n", *dir, m.Store, *out, len(m.Files), m.RootPin)
	if m.Store == "postgres" && m.PGDump != "pg_dump" {
		fmt.Fprintf(stderr, "pg_dump is not installed: the keys are saved; dump the database with:\n  %s\n", m.PGDump)
	}
	return nil
}

func cmdRestore(ctx context.Context, args []string, stderr io.Writer) error {
	fs, dir := newFlags("restore")
	from := fs.String("from", "", "backup directory made by edgeca backup")
	force := fs.Bool("force", false, "replace the CA files and store in a --dir that is not empty")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *from == "" {
		return fmt.Errorf("%w: restore needs --from DIR", errUsage)
	}
	m, err := ca.Restore(ctx, *from, *dir, ca.RestoreOptions{Force: *force, DB: dbOf(fs)})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "restored the backup of %s (%s store, %d files) into %s\n", m.CreatedAt.Format("2006-01-02T15:04:05Z"), m.Store, len(m.Files), *dir)
	return nil
}

// dispatchCAKeys runs the CA key lifecycle commands (backup, restore,
// rotate, cacerts).
func dispatchCAKeys(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) error {
	switch cmd {
	case "backup":
		return cmdBackup(ctx, args, stdout, stderr)
	case "restore":
		return cmdRestore(ctx, args, stderr)
	case "rotate":
		return cmdRotate(ctx, args, stderr)
	}
	return cmdCACerts(ctx, args, stdout)
}
