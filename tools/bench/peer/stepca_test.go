package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMintOTT(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name, kid, aud, sub string
		ttl                 time.Duration
	}{
		{"bench device", "kid-1", "https://127.0.0.1:4443/1.0/sign", "bench-3-17", time.Hour},
		{"short-lived", "kid-2", "https://[::1]:1/1.0/sign", "dev-a", 5 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := mintOTT(key, tc.kid, tc.aud, tc.sub, now, tc.ttl)
			if err != nil {
				t.Fatal(err)
			}
			parts := strings.Split(tok, ".")
			if len(parts) != 3 {
				t.Fatalf("token %q: %d parts, want 3", tok, len(parts))
			}
			var header struct{ Alg, Kid, Typ string }
			decodeJSONPart(t, parts[0], &header)
			if header.Alg != "ES256" || header.Kid != tc.kid || header.Typ != "JWT" {
				t.Errorf("header %+v", header)
			}
			var c ottClaims
			decodeJSONPart(t, parts[1], &c)
			want := ottClaims{Issuer: stepcaProvisioner, Audience: tc.aud, Subject: tc.sub, SANs: []string{tc.sub}, ID: c.ID,
				NotBefore: now.Unix(), IssuedAt: now.Unix(), Expiry: now.Add(tc.ttl).Unix()}
			if len(c.ID) != 32 || !slices.Equal(c.SANs, want.SANs) {
				t.Errorf("claims %+v: want a 32-hex-digit jti and sans %v", c, want.SANs)
			}
			if !reflect.DeepEqual(c, want) {
				t.Errorf("claims %+v, want %+v", c, want)
			}
			sig, err := base64.RawURLEncoding.DecodeString(parts[2])
			if err != nil || len(sig) != 64 {
				t.Fatalf("signature %q: %v, %d bytes (want r||s, 64)", parts[2], err, len(sig))
			}
			digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
			r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
			if !ecdsa.Verify(&key.PublicKey, digest[:], r, s) {
				t.Error("the signature does not verify with the provisioner's key")
			}
			if ecdsa.Verify(&other.PublicKey, digest[:], r, s) {
				t.Error("the signature verifies with another key")
			}
			// r and s are fixed 32-byte halves: one in 128 signatures has a
			// half below 2^248, which unpadded big-endian bytes would
			// shorten.
			for range 1000 {
				tok, err := mintOTT(key, tc.kid, tc.aud, tc.sub, now, tc.ttl)
				if err != nil {
					t.Fatal(err)
				}
				if sig, err := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:]); err != nil || len(sig) != 64 {
					t.Fatalf("signature of %d bytes (%v), want 64", len(sig), err)
				}
			}
			again, err := mintOTT(key, tc.kid, tc.aud, tc.sub, now, tc.ttl)
			if err != nil {
				t.Fatal(err)
			}
			var c2 ottClaims
			decodeJSONPart(t, strings.Split(again, ".")[1], &c2)
			if c2.ID == c.ID {
				t.Errorf("two tokens share the jti %s: step-ca would refuse the second as used", c.ID)
			}
		})
	}
}

func decodeJSONPart(t *testing.T, part string, v any) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		t.Fatalf("part %q: %v", part, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("part %s: %v", b, err)
	}
}

func TestECJWK(t *testing.T) {
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  *ecdsa.PrivateKey
		ok   bool
	}{
		{"P-256", p256, true},
		{"P-384 is not ES256", p384, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j, err := ecJWK(&tc.key.PublicKey)
			if (err == nil) != tc.ok {
				t.Fatalf("ecJWK: %v, want ok %v", err, tc.ok)
			}
			if !tc.ok {
				return
			}
			x, errX := base64.RawURLEncoding.DecodeString(j.X)
			y, errY := base64.RawURLEncoding.DecodeString(j.Y)
			if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
				t.Fatalf("x %q y %q: want 32 bytes each", j.X, j.Y)
			}
			pt := append(append([]byte{4}, x...), y...)
			got, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pt)
			if err != nil || !got.Equal(&tc.key.PublicKey) {
				t.Fatalf("the JWK is not the key: %v", err)
			}
			// RFC 7638: the required members in lexicographic order, no
			// white space, which encoding/json gives a map.
			canon, err := json.Marshal(map[string]string{"crv": "P-256", "kty": "EC", "x": j.X, "y": j.Y})
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(canon)
			if j.Kid != base64.RawURLEncoding.EncodeToString(sum[:]) || j.Kty != "EC" || j.Crv != "P-256" || j.Alg != "ES256" || j.Use != "sig" {
				t.Errorf("jwk %+v: want kid the RFC 7638 thumbprint, an ES256 signing key", j)
			}
		})
	}
}

func TestStepcaConfig(t *testing.T) {
	prov := jwk{Use: "sig", Kty: "EC", Kid: "k1", Crv: "P-256", Alg: "ES256", X: "x", Y: "y"}
	for _, tc := range []struct {
		name, addr string
		wantDNS    string
		ok         bool
	}{
		{"IPv4", "127.0.0.1:4443", "127.0.0.1", true},
		{"IPv6", "[::1]:4443", "::1", true},
		{"no port", "127.0.0.1", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b, err := stepcaConfig(dir, tc.addr, prov)
			if (err == nil) != tc.ok {
				t.Fatalf("stepcaConfig: %v, want ok %v", err, tc.ok)
			}
			if !tc.ok {
				return
			}
			var cfg struct {
				Root, Crt, Key, Address string
				DNSNames                []string
				DB                      struct{ Type, DataSource string }
				Authority               struct {
					Provisioners []struct {
						Type, Name string
						Key        jwk
						Claims     map[string]string
					}
				}
			}
			if err := json.Unmarshal(b, &cfg); err != nil {
				t.Fatalf("ca.json %s: %v", b, err)
			}
			if cfg.Root != filepath.Join(dir, "root.pem") || cfg.Crt != filepath.Join(dir, "intermediate.pem") || cfg.Key != filepath.Join(dir, "intermediate_key.pem") {
				t.Errorf("files %q %q %q", cfg.Root, cfg.Crt, cfg.Key)
			}
			if cfg.Address != tc.addr || !slices.Equal(cfg.DNSNames, []string{tc.wantDNS}) {
				t.Errorf("address %q dnsNames %v", cfg.Address, cfg.DNSNames)
			}
			if cfg.DB.Type != "badger" || cfg.DB.DataSource != filepath.Join(dir, "db") {
				t.Errorf("db %+v: want badger in dir/db", cfg.DB)
			}
			ps := cfg.Authority.Provisioners
			if len(ps) != 1 || ps[0].Type != "JWK" || ps[0].Name != stepcaProvisioner || ps[0].Key != prov ||
				ps[0].Claims["defaultTLSCertDuration"] != "24h" || ps[0].Claims["maxTLSCertDuration"] != "24h" {
				t.Errorf("provisioners %+v: want one JWK provisioner with the key, 24-hour certificates", ps)
			}
		})
	}
}

func TestParseSignAnswer(t *testing.T) {
	ca, err := newPeerCA()
	if err != nil {
		t.Fatal(err)
	}
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.inter.Raw}))
	answer := func(crt string) string {
		b, _ := json.Marshal(map[string]any{"crt": crt, "ca": certPEM, "certChain": []string{crt, certPEM}})
		return string(b)
	}
	for _, tc := range []struct {
		name, body string
		want       *x509.Certificate
	}{
		{"certificate", answer(certPEM), ca.inter},
		{"not JSON", "<html>", nil},
		{"no crt", `{"ca":"x"}`, nil},
		{"not a certificate block", answer(string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ca.inter.Raw}))), nil},
		{"bad DER", answer(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 1}}))), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseSignAnswer([]byte(tc.body))
			if (err == nil) != (tc.want != nil) {
				t.Fatalf("parseSignAnswer: %v, want a certificate: %v", err, tc.want != nil)
			}
			if tc.want != nil && !got.Equal(tc.want) {
				t.Error("parsed another certificate")
			}
		})
	}
}

func TestStepcaStores(t *testing.T) {
	for _, tc := range []struct {
		badger, want string
	}{
		{stepcaBadgerChecked, "SyncWrites is on"},
		{"v1.6.3", "checked for badger " + stepcaBadgerChecked + " only"},
	} {
		if got := stepcaStores("v0.30.2", tc.badger); !strings.Contains(got, tc.want) || !strings.Contains(got, "badger "+tc.badger) {
			t.Errorf("stepcaStores(%s) = %q, want it to say %q", tc.badger, got, tc.want)
		}
	}
}
