package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"

	"path/filepath"

	"github.com/edgeagent/edgeagent/ca"
	"github.com/edgeagent/edgeagent/ca/store"
	"github.com/edgeagent/edgeagent/internal/atomicfile"
)

// cmdDeviceRevokeSerial revokes one certificate: device revoke --serial S.
func cmdRevokeSerial(ctx context.Context, dir, serial string, fs *flag.FlagSet, stderr io.Writer) error {
	c, err := open(ctx, dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	rc, err := c.RevokeSerial(ctx, serial, store.ReasonUnspecified)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "certificate %s of %s revoked: on the CRL until it expires at %s\n", rc.Serial, rc.DeviceID, rc.NotAfter.Format("2006-01-02T15:04:05Z07:00"))
	return nil
}

func cmdDeviceUnrevoke(ctx context.Context, args []string, stderr io.Writer) error {
	fs, dir := newFlags("device unrevoke")
	pos, err := parse(fs, args, "ID")
	if err != nil {
		return err
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	rv, err := c.UnrevokeDevice(ctx, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "device %s active again: %d certificate(s) off the CRL (superseded ones stay)\n", rv.DeviceID, len(rv.Certs))
	return nil
}

func cmdDeviceDelete(ctx context.Context, args []string, stderr io.Writer) error {
	fs, dir := newFlags("device delete")
	pos, err := parse(fs, args, "ID")
	if err != nil {
		return err
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	rv, err := c.DeleteDevice(ctx, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "device %s deleted, %d certificate(s) on the CRL: enroll its replacement with `edgeca token create --device %s`\n", rv.DeviceID, len(rv.Certs), rv.DeviceID)
	return nil
}

func cmdEnforcerCreate(ctx context.Context, args []string, stderr io.Writer) error {
	fs, dir := newFlags("enforcer create")
	out := fs.String("out", ".", "directory to write NAME.pem (certificate and CA chain) and NAME-key.pem (mode 0600) to")
	pos, err := parse(fs, args, "NAME")
	if err != nil {
		return err
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	e, err := c.CreateEnforcer(ctx, pos[0])
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(e.Key)
	if err != nil {
		return fmt.Errorf("enforcer create: %w", err)
	}
	certPath := filepath.Join(*out, pos[0]+".pem")
	keyPath := filepath.Join(*out, pos[0]+"-key.pem")
	if err := atomicfile.Write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("enforcer create: %w", err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.Cert.Raw})
	chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Intermediate().Raw})...)
	if err := atomicfile.Write(certPath, chain, 0o644); err != nil {
		return fmt.Errorf("enforcer create: %w", err)
	}
	fmt.Fprintf(stderr, "enforcer %s: certificate %s, key %s (serial %s, valid until %s)\n", pos[0], certPath, keyPath, ca.SerialHex(e.Cert.SerialNumber), e.Cert.NotAfter.Format("2006-01-02"))
	return nil
}

// cmdCRL prints the current CRL in PEM, or writes it with --out.
func cmdCRL(ctx context.Context, args []string, stdout io.Writer) error {
	fs, dir := newFlags("crl")
	out := fs.String("out", "", "write the PEM CRL to this file (atomically) instead of standard output")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := open(ctx, *dir, fs)
	if err != nil {
		return err
	}
	defer c.Close()
	b, err := c.CRLPEM(ctx)
	if err != nil {
		return err
	}
	if *out != "" {
		return atomicfile.Write(*out, b, 0o644)
	}
	_, err = stdout.Write(b)
	return err
}

// hasFlag reports whether args set --name or -name.
func hasFlag(args []string, name string) bool {
	for _, a := range args {
		for _, p := range []string{"-" + name, "--" + name} {
			if a == p || len(a) > len(p) && a[:len(p)+1] == p+"=" {
				return true
			}
		}
	}
	return false
}
