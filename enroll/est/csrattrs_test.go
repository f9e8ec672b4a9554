package est

import (
	"encoding/asn1"
	"errors"
	"testing"
)

func TestCSRAttrsRoundTrip(t *testing.T) {
	// RFC 7030 §4.5.2 example shape: challengePassword OID, an attribute
	// asking for a P-384 key, and ecdsa-with-SHA384.
	in := CSRAttrs{
		OIDs: []asn1.ObjectIdentifier{{1, 2, 840, 113549, 1, 9, 7}, {1, 2, 840, 10045, 4, 3, 3}},
		Attributes: []Attribute{{
			Type:   asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1},
			Values: []asn1.RawValue{{FullBytes: []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}}},
		}},
	}
	der, err := EncodeCSRAttrs(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeCSRAttrs(der)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.OIDs) != 2 || !out.OIDs[1].Equal(in.OIDs[1]) || len(out.Attributes) != 1 || !out.Attributes[0].Type.Equal(in.Attributes[0].Type) {
		t.Fatalf("round trip: %+v", out)
	}
	empty, err := EncodeCSRAttrs(CSRAttrs{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeCSRAttrs(empty); err != nil || !got.Empty() {
		t.Fatalf("empty: %+v %v", got, err)
	}
}

func TestCSRAttrsRejects(t *testing.T) {
	for name, in := range map[string][]byte{
		"empty":    nil,
		"int item": {0x30, 0x03, 0x02, 0x01, 0x05},
		"trailing": {0x30, 0x00, 0x00},
		"not seq":  {0x02, 0x01, 0x05},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeCSRAttrs(in); !errors.Is(err, ErrCSRAttrs) {
				t.Fatalf("err = %v, want ErrCSRAttrs", err)
			}
		})
	}
}

func FuzzDecodeCSRAttrs(f *testing.F) {
	f.Add([]byte{0x30, 0x00})
	f.Add([]byte{0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x07})
	f.Fuzz(func(t *testing.T, in []byte) {
		a, err := DecodeCSRAttrs(in)
		if err != nil {
			return
		}
		if _, err := EncodeCSRAttrs(a); err != nil {
			t.Fatalf("decoded value does not re-encode: %v", err)
		}
	})
}
