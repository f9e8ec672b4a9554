package agent

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/edgeagent/edgeagent/agent/config"
	"github.com/edgeagent/edgeagent/deviceid"
	"github.com/edgeagent/edgeagent/enroll/token"
	"github.com/edgeagent/edgeagent/keystore"
)

// This file is the one identity source: the rules that turn a
// configuration (which `edgeagent enroll` builds from its flags, and the
// daemon reads from its file) and secrets given outside it into an
// enrollment, and the rules that say which device id a device has.

// Secrets are enrollment secrets given outside the config file: a token
// from --token, standard input or EDGEAGENT_TOKEN, a password from
// --password. Files (enroll.token_file, enroll.password_file) are config
// keys.
type Secrets struct {
	Token    string
	Password string
	// TokenFrom names where Token came from ("EDGEAGENT_TOKEN",
	// "--token"), for errors.
	TokenFrom string
}

// ErrNeedsOperator is wrapped by errors that retrying cannot fix: the
// config, the token, the CA's records or the state directory must change
// first. `edgeagent run` exits with a status that systemd does not restart
// on (packaging's RestartPreventExitStatus), instead of retrying forever.
var ErrNeedsOperator = errors.New("needs the operator")

// needsOperator wraps err so that errors.Is(err, ErrNeedsOperator) holds.
func needsOperator(err error) error {
	if err == nil || errors.Is(err, ErrNeedsOperator) {
		return err
	}
	return operatorError{err}
}

type operatorError struct{ err error }

func (e operatorError) Error() string        { return e.err.Error() }
func (e operatorError) Unwrap() error        { return e.err }
func (e operatorError) Is(target error) bool { return target == ErrNeedsOperator }

// fieldErr is a problem with one config key.
// errNotEnrolled: no token, no server, nothing to recover from.
var errNotEnrolled = fieldErr("enroll.token_file", "this device is not enrolled and has no enrollment token: set enroll.token_file or EDGEAGENT_TOKEN "+
	"(or enroll.server with enroll.ca_pin or enroll.ca_bundle and enroll.username/enroll.password_file), or run 'edgeagent enroll'")

func fieldErr(key, format string, args ...any) error {
	return needsOperator(&config.FieldError{Key: key, Msg: fmt.Sprintf(format, args...)})
}

// DeviceIDMismatchError says the config names a device other than the one
// this state directory enrolled.
type DeviceIDMismatchError struct {
	Configured, Enrolled, StateDir string
}

func (e *DeviceIDMismatchError) Error() string {
	return fmt.Sprintf("device_id is %q in the config, but the identity in %s is device %q: the device id is the enrolled identity's; "+
		"remove device_id from the config (or set it to %q), or enroll again as %q with 'edgeagent enroll --force --device-id %s'",
		e.Configured, e.StateDir, e.Enrolled, e.Enrolled, e.Configured, e.Configured)
}

// Is makes the mismatch an ErrNeedsOperator.
func (e *DeviceIDMismatchError) Is(target error) bool { return target == ErrNeedsOperator }

// CheckDeviceID returns an error when configured (device_id; "" for
// unset) contradicts the enrolled id.
func CheckDeviceID(configured string, id *Identity, stateDir string) error {
	if configured == "" || configured == id.DeviceID {
		return nil
	}
	return &DeviceIDMismatchError{Configured: configured, Enrolled: id.DeviceID, StateDir: stateDir}
}

// FirstDeviceID is the device id a first enrollment asks for: the
// configured one, else the one an earlier identity in stateDir recorded
// (enroll --force over a damaged identity keeps the device's name), else
// the host name. The second return says where it came from, for errors.
func FirstDeviceID(configured, stateDir string) (string, string) {
	if configured != "" {
		return configured, "device_id"
	}
	if m, err := readMeta(stateDir); err == nil && m.DeviceID != "" {
		return m.DeviceID, "the earlier identity in " + stateDir
	}
	host, _ := os.Hostname()
	return host, "the host name (device_id is not set)"
}

// PlanEnrollment turns cfg and s into the options of a first enrollment:
// a token (from s or enroll.token_file), or enroll.server with
// enroll.ca_pin or enroll.ca_bundle and enroll.username with a password
// (from s or enroll.password_file). Each problem is a *config.FieldError
// naming the key, wrapped as ErrNeedsOperator, so a caller that maps flags
// onto keys can name the flag instead. The Keystore, Logger, Now and
// hooks are the caller's to set.
func PlanEnrollment(cfg config.Config, s Secrets) (EnrollOptions, error) {
	ec := cfg.Enroll
	o := EnrollOptions{StateDir: cfg.StateDir, Label: ec.Label, PostQuantumTLS: ec.PostQuantumTLS, Attest: ec.Attest == "tpm"}
	var from string
	o.DeviceID, from = FirstDeviceID(cfg.DeviceID, cfg.StateDir)
	if err := deviceid.Validate(o.DeviceID); err != nil {
		return o, fieldErr("device_id", "%v (from %s)", err, from)
	}
	alg, err := keystore.ParseAlgorithm(cfg.KeyAlgorithm)
	if err != nil {
		return o, fieldErr("key_algorithm", "%v", err)
	}
	o.KeyAlg = alg

	tokText, tokFrom := s.Token, s.TokenFrom
	if tokFrom == "" {
		tokFrom = "the token"
	}
	if ec.TokenFile != "" {
		if tokText != "" {
			return o, fieldErr("enroll.token_file", "%s also gives a token: give one of them", tokFrom)
		}
		b, err := ReadSecretFile(ec.TokenFile)
		if err != nil {
			return o, fieldErr("enroll.token_file", "%v", err)
		}
		tokText, tokFrom = string(b), ec.TokenFile
	}
	if tokText != "" {
		// A token carries the server, the pin and the credentials:
		// anything else given for them would be silently ignored.
		for _, k := range []struct{ key, val string }{
			{"enroll.server", ec.Server}, {"enroll.ca_pin", ec.CAPin}, {"enroll.username", ec.Username},
			{"enroll.password_file", ec.PasswordFile}, {"enroll.password", s.Password},
		} {
			if k.val != "" {
				return o, fieldErr(k.key, "a token carries the server, CA pin and credentials: do not also give them")
			}
		}
		tok, err := token.Parse(tokText)
		if err != nil {
			key := "enroll.token_file"
			if ec.TokenFile == "" {
				key = "enroll.token"
			}
			return o, fieldErr(key, "%s: %v", tokFrom, err)
		}
		o.Token = &tok
	} else {
		if ec.Server == "" {
			if o.Attest {
				// Recovery by TPM attestation alone: the server and its
				// roots come from the identity in the state dir
				// (attestRecoveryOptions, once the keystore is open).
				return o, nil
			}
			return o, errNotEnrolled
		}
		if err := token.ValidateURL(ec.Server); err != nil {
			return o, fieldErr("enroll.server", "%v", err)
		}
		o.Server, o.Username, o.Password = ec.Server, ec.Username, s.Password
		if ec.CAPin != "" {
			if o.CAPin, err = token.ParsePin(ec.CAPin); err != nil {
				return o, fieldErr("enroll.ca_pin", "%v", err)
			}
		}
		if ec.CAPin == "" && ec.CABundle == "" {
			return o, fieldErr("enroll.ca_pin", "enroll.server needs enroll.ca_pin or enroll.ca_bundle to authenticate the EST server")
		}
		if ec.PasswordFile != "" {
			if s.Password != "" {
				return o, fieldErr("enroll.password_file", "a password is also given: give one of them")
			}
			b, err := ReadSecretFile(ec.PasswordFile)
			if err != nil {
				return o, fieldErr("enroll.password_file", "%v", err)
			}
			o.Password = strings.TrimRight(string(b), "\r\n")
		}
		// With attestation the TPM may be all the proof (a CA with
		// attested recovery and a device it knows).
		if o.Username == "" && !o.Attest {
			return o, fieldErr("enroll.username", "enroll.server needs a user name and a password")
		}
		if o.Password == "" && o.Username != "" {
			return o, fieldErr("enroll.password_file", "enroll.server needs a user name and a password")
		}
	}
	if ec.CABundle != "" {
		b, err := readBounded(ec.CABundle, maxPEMBytes)
		if err != nil {
			return o, fieldErr("enroll.ca_bundle", "%v", err)
		}
		if o.CABundle, err = ParseCertsPEM(b); err != nil {
			return o, fieldErr("enroll.ca_bundle", "%s: %v", ec.CABundle, err)
		}
		if o.Token != nil {
			// An operator-supplied bundle replaces the token's pin.
			o.Token.Pin = token.Pin{}
		}
	}
	return o, nil
}

// trust says which server a first enrollment talks to and what
// authenticates it: a CA bundle (roots) or a pin.
func (o EnrollOptions) trust() (server string, roots *x509.CertPool, pin token.Pin) {
	server, pin = o.Server, o.CAPin
	if o.Token != nil {
		server, pin = o.Token.URL, o.Token.Pin
	}
	if len(o.CABundle) > 0 {
		roots = x509.NewCertPool()
		for _, c := range o.CABundle {
			roots.AddCert(c)
		}
		pin = token.Pin{}
	}
	return server, roots, pin
}

// readBounded reads a file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is over %d bytes", path, limit)
	}
	return b, nil
}

// stateFiles lists which identity files dir holds.
func stateFiles(dir string) (present []string) {
	for _, f := range []string{IdentityFile, CertFile, CAFile} {
		if fileExists(filepath.Join(dir, f)) {
			present = append(present, f)
		}
	}
	return present
}
