package enroll

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// NotExtendedError says a renewal was answered with a certificate that
// expires no later than the one it replaced:
// typically a CA that caps what it issues at its own expiry. The
// certificate is valid and is kept (a rekey made a new key for it); but
// renewing again soon gets the same answer, so a caller backs off for long
// instead of renewing on the certificate's schedule, which for such a
// certificate comes due at once.
type NotExtendedError struct {
	// Current and Issued are the NotAfter of the certificate renewed and
	// of the one issued.
	Current, Issued time.Time
	// CA names the issuing CA when its own NotAfter is what capped the
	// certificate (its NotAfter is CANotAfter); "" otherwise.
	CA         string
	CANotAfter time.Time
	// Shortened: the new certificate expires before the current one.
	Shortened bool
}

func (e *NotExtendedError) Error() string {
	msg := fmt.Sprintf("enroll: renewal did not extend the certificate: the CA issued one that expires %s, not later than the current one (%s)",
		e.Issued.UTC().Format(time.RFC3339), e.Current.UTC().Format(time.RFC3339))
	if e.CA != "" {
		msg += fmt.Sprintf("; the issuing CA %q itself expires %s: the CA must be renewed", e.CA, e.CANotAfter.UTC().Format(time.RFC3339))
	}
	return msg
}

// IsNotExtended reports whether err is a *NotExtendedError.
func IsNotExtended(err error) bool {
	var ne *NotExtendedError
	return errors.As(err, &ne)
}

// CheckExtended returns a *NotExtendedError when issued (chain[0], its
// issuers after it) does not expire after current. One with the very same
// validity (a renewal within the second of the last one: certificate
// times have a resolution of a second) is not reported: it is as good as
// current, and no sign of a cap.
func CheckExtended(current *x509.Certificate, chain []*x509.Certificate) error {
	if current == nil || len(chain) == 0 {
		return nil
	}
	issued := chain[0]
	if issued.NotAfter.After(current.NotAfter) || issued.NotAfter.Equal(current.NotAfter) && issued.NotBefore.Equal(current.NotBefore) {
		return nil
	}
	e := &NotExtendedError{Current: current.NotAfter, Issued: issued.NotAfter, Shortened: issued.NotAfter.Before(current.NotAfter)}
	for _, c := range chain[1:] {
		if !c.NotAfter.After(issued.NotAfter) {
			e.CA, e.CANotAfter = c.Subject.String(), c.NotAfter
			break
		}
	}
	return e
}
