package tpm

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/google/go-tpm/tpm2"
)

// Sentinel errors callers can branch on with errors.Is. The returned errors
// carry a message that says what to do; these only classify.
var (
	// ErrNoDevice: the TPM device node does not exist, or no TPM simulator
	// listens at the configured address.
	ErrNoDevice = errors.New("no TPM device")
	// ErrPermission: the process may not open the TPM device.
	ErrPermission = errors.New("permission denied on the TPM device")
	// ErrLockout: the TPM refuses authorizations until its dictionary-attack
	// lockout ends.
	ErrLockout = errors.New("TPM is in dictionary-attack lockout")
	// ErrOwnerAuth: the owner hierarchy has an authorization value that was
	// not configured (or is wrong).
	ErrOwnerAuth = errors.New("TPM owner hierarchy authorization required")
	// ErrKeyAuth: the device key's auth value is wrong.
	ErrKeyAuth = errors.New("wrong auth value for the TPM device key")
	// ErrForeignKey: the stored key blobs were not made by this TPM (or the
	// TPM was cleared since).
	ErrForeignKey = errors.New("key blobs belong to a different TPM")
	// ErrPSSSaltLength: the TPM made an RSA-PSS signature whose salt length
	// the caller's verifier would reject.
	ErrPSSSaltLength = errors.New("TPM cannot produce the requested RSA-PSS salt length")
	// ErrUnsupported: the TPM does not support the algorithm asked for.
	ErrUnsupported = errors.New("TPM does not support the requested algorithm")
	// ErrClosed: the Store was closed.
	ErrClosed = errors.New("keystore: tpm: keystore is closed")
	// ErrRetired: the key was replaced by a committed or newer rotation.
	ErrRetired = errors.New("key was retired")
)

// env is what error hints need to know about where the TPM and the blobs
// are.
type env struct {
	device  string // TPM device path, when not a simulator
	address string // simulator address
	group   string // group owning the device
	dir     string // state directory holding the blobs
}

// opKind names the kind of TPM operation that failed, because the same
// response code means different things in different places (a bad auth on
// CreatePrimary is the owner password, on Sign the key's auth value).
type opKind int

const (
	opOpen   opKind = iota // opening the device or connecting to the simulator
	opOwner                // commands authorized by the owner hierarchy: CreatePrimary, EvictControl
	opLoad                 // loading stored key blobs under the SRK
	opUseKey               // commands authorized by the device key: Sign
	opOther
)

// Error is a classified TPM failure: What is what was being done, Hint says
// what to do about it, Kind is one of the sentinels above (or nil) and Err
// the underlying cause (often a tpm2.TPMRC, so errors.Is(err,
// tpm2.TPMRCLockout) works too).
type Error struct {
	What string
	Kind error
	Hint string
	Err  error
}

func (e *Error) Error() string {
	msg := "keystore: tpm: " + e.What
	if e.Hint != "" {
		msg += ": " + e.Hint
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap exposes both the classification and the cause.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// classify turns an error from opening the TPM or from a TPM command into an
// *Error with a hint saying what to do.
func classify(op opKind, what string, err error, e env) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	out := &Error{What: what, Err: err}
	badAuth := errors.Is(err, tpm2.TPMRCBadAuth) || errors.Is(err, tpm2.TPMRCAuthFail)
	switch {
	case op == opOpen && e.address != "":
		out.Kind = ErrNoDevice
		out.Hint = "no TPM simulator accepts connections at " + e.address +
			": start swtpm there, or unset tpm.address to use " + DefaultDevice
	case op == opOpen && errors.Is(err, fs.ErrNotExist):
		out.Kind = ErrNoDevice
		out.Hint = e.device + " is missing: this machine has no TPM 2.0, it is disabled in the firmware, or the kernel " +
			"driver is not loaded (modprobe tpm_tis tpm_crb); or set tpm.address to the host:port of a TPM simulator instead"
	case op == opOpen && errors.Is(err, fs.ErrPermission):
		group := e.group
		if group == "" || group == "0" || group == "root" {
			group = "tss"
		}
		out.Kind = ErrPermission
		out.Hint = fmt.Sprintf("the device is owned by group %s; add the service user to it "+
			"(usermod -aG %s <user>, then restart the service)", group, group)
	case errors.Is(err, tpm2.TPMRCLockout):
		out.Kind = ErrLockout
		out.Hint = "the TPM is in dictionary-attack lockout after too many wrong authorization values; " +
			"wait for the lockout to expire or reset it with the lockout password (tpm2_dictionarylockout --clear-lockout), " +
			"and check the configured TPM auth values"
	case op == opOwner && badAuth:
		out.Kind = ErrOwnerAuth
		out.Hint = "the TPM owner hierarchy has a password that was not configured or is wrong; " +
			"configure the owner password for the agent, or reset it (tpm2_changeauth -c owner)"
	case op == opUseKey && badAuth:
		out.Kind = ErrKeyAuth
		out.Hint = "the configured auth value does not match the one the device key was created with; " +
			"restore the original auth value or re-enroll (repeated failures put the TPM into lockout)"
	case op == opLoad && (errors.Is(err, tpm2.TPMRCIntegrity) || errors.Is(err, tpm2.TPMRCBinding) ||
		errors.Is(err, tpm2.TPMRCSensitive) || errors.Is(err, tpm2.TPMRCSize) || errors.Is(err, tpm2.TPMRCKey)):
		out.Kind = ErrForeignKey
		out.Hint = fmt.Sprintf("key blobs in %s were made by a different TPM or the TPM was cleared; re-enroll", e.dir)
	case errors.Is(err, tpm2.TPMRCCurve) || errors.Is(err, tpm2.TPMRCKeySize) || errors.Is(err, tpm2.TPMRCScheme) ||
		errors.Is(err, tpm2.TPMRCHash) || errors.Is(err, tpm2.TPMRCAsymmetric):
		out.Kind = ErrUnsupported
		out.Hint = "this TPM does not support the key type or hash; use ecdsa-p256 (every TPM 2.0 supports it)"
	}
	return out
}
