package enroll

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"

	"github.com/edgeagent/edgeagent/deviceid"
)

// DeviceURIPrefix starts the SAN URI that names a device.
const DeviceURIPrefix = "urn:edgeagent:device:"

// oidSubjectAltName is the SubjectAltName extension (RFC 5280 §4.2.1.6).
var oidSubjectAltName = []int{2, 5, 29, 17}

// BuildCSR makes a PKCS#10 request for deviceID signed by key: subject CN
// and SAN URI name the device.
func BuildCSR(key crypto.Signer, deviceID string) ([]byte, error) {
	return BuildEnrollCSR(key, deviceID, CSRPlan{})
}

// BuildEnrollCSR is BuildCSR with what the server asked in /csrattrs
// (see CSRPlan) that the agent can honour.
func BuildEnrollCSR(key crypto.Signer, deviceID string, plan CSRPlan) ([]byte, error) {
	if err := deviceid.Validate(deviceID); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	uri, err := url.Parse(DeviceURIPrefix + deviceID)
	if err != nil {
		return nil, fmt.Errorf("enroll: device URI: %w", err)
	}
	return signCSR(key, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: deviceID},
		URIs:    []*url.URL{uri},
	}, plan)
}

// BuildRenewalCSR makes the PKCS#10 request to renew current: its Subject
// and SubjectAltName are those of current byte for byte, as RFC 7030
// §4.2.2 requires of a reenroll, whatever the CA put there (an O= it
// added, a SAN it dropped or rewrote). key is current's key, or the new
// one of a rekey.
func BuildRenewalCSR(key crypto.Signer, current *x509.Certificate, plan CSRPlan) ([]byte, error) {
	if current == nil {
		return nil, errors.New("enroll: renewal CSR: no current certificate")
	}
	tmpl := &x509.CertificateRequest{RawSubject: current.RawSubject}
	for _, e := range current.Extensions {
		if e.Id.Equal(oidSubjectAltName) {
			tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, e)
		}
	}
	return signCSR(key, tmpl, plan)
}

// signCSR adds what plan asks to tmpl and signs it with key.
func signCSR(key crypto.Signer, tmpl *x509.CertificateRequest, plan CSRPlan) ([]byte, error) {
	def, err := defaultSignature(key.Public())
	if err != nil {
		return nil, err
	}
	plan.noteKey(key.Public())
	for _, e := range plan.Extensions {
		if e.Id.Equal(oidSubjectAltName) {
			continue // the device's names are not the server's to choose (noted by PlanCSR)
		}
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, e)
	}
	tmpl.SignatureAlgorithm = def
	if plan.SignatureAlgorithm != x509.UnknownSignatureAlgorithm {
		if signatureFits(plan.SignatureAlgorithm, key.Public()) {
			tmpl.SignatureAlgorithm = plan.SignatureAlgorithm
		} else {
			plan.note("the server asks for the signature algorithm %v, which this key cannot make; signing with %v", plan.SignatureAlgorithm, def)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil && tmpl.SignatureAlgorithm != def {
		// A key store (a TPM) may not sign with the hash asked for.
		plan.note("signing the CSR with %v failed (%v); signing with %v", tmpl.SignatureAlgorithm, err, def)
		tmpl.SignatureAlgorithm = def
		der, err = x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	}
	if err != nil {
		return nil, fmt.Errorf("enroll: sign CSR: %w", err)
	}
	return der, nil
}

func defaultSignature(pub crypto.PublicKey) (x509.SignatureAlgorithm, error) {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return x509.ECDSAWithSHA256, nil
	case *rsa.PublicKey:
		return x509.SHA256WithRSA, nil
	default:
		return 0, fmt.Errorf("enroll: unsupported key type %T", pub)
	}
}

func signatureFits(alg x509.SignatureAlgorithm, pub crypto.PublicKey) bool {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return alg == x509.ECDSAWithSHA256 || alg == x509.ECDSAWithSHA384 || alg == x509.ECDSAWithSHA512
	case *rsa.PublicKey:
		return alg == x509.SHA256WithRSA || alg == x509.SHA384WithRSA || alg == x509.SHA512WithRSA
	}
	return false
}
