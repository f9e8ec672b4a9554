package est

import (
	"encoding/asn1"
	"errors"
	"fmt"
)

// ErrCSRAttrs is wrapped by DecodeCSRAttrs errors.
var ErrCSRAttrs = errors.New("malformed csrattrs")

// CSRAttrs is the content of a csrattrs response (RFC 7030 §4.5.2): OIDs the
// server wants present in the CSR, and attributes with requested values.
type CSRAttrs struct {
	OIDs       []asn1.ObjectIdentifier
	Attributes []Attribute
}

// Attribute is one requested attribute with its raw DER values.
type Attribute struct {
	Type   asn1.ObjectIdentifier
	Values []asn1.RawValue `asn1:"set"`
}

// Empty reports whether the server asked for nothing.
func (a CSRAttrs) Empty() bool { return len(a.OIDs) == 0 && len(a.Attributes) == 0 }

// EncodeCSRAttrs builds the DER of CsrAttrs.
func EncodeCSRAttrs(a CSRAttrs) ([]byte, error) {
	var body []byte
	for _, oid := range a.OIDs {
		b, err := asn1.Marshal(oid)
		if err != nil {
			return nil, fmt.Errorf("encode csrattrs: %w", err)
		}
		body = append(body, b...)
	}
	for _, at := range a.Attributes {
		b, err := asn1.Marshal(at)
		if err != nil {
			return nil, fmt.Errorf("encode csrattrs: %w", err)
		}
		body = append(body, b...)
	}
	out, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: body})
	if err != nil {
		return nil, fmt.Errorf("encode csrattrs: %w", err)
	}
	return out, nil
}

// DecodeCSRAttrs parses the DER of CsrAttrs ::= SEQUENCE OF AttrOrOID.
func DecodeCSRAttrs(der []byte) (CSRAttrs, error) {
	var seq []asn1.RawValue
	rest, err := asn1.Unmarshal(der, &seq)
	if err != nil {
		return CSRAttrs{}, fmt.Errorf("%w: %v", ErrCSRAttrs, err)
	}
	if len(rest) != 0 {
		return CSRAttrs{}, fmt.Errorf("%w: %d trailing bytes", ErrCSRAttrs, len(rest))
	}
	var out CSRAttrs
	for i, item := range seq {
		switch {
		case item.Class == asn1.ClassUniversal && item.Tag == asn1.TagOID:
			var oid asn1.ObjectIdentifier
			if _, err := asn1.Unmarshal(item.FullBytes, &oid); err != nil {
				return CSRAttrs{}, fmt.Errorf("%w: item %d: %v", ErrCSRAttrs, i, err)
			}
			out.OIDs = append(out.OIDs, oid)
		case item.Class == asn1.ClassUniversal && item.Tag == asn1.TagSequence:
			var at Attribute
			r, err := asn1.Unmarshal(item.FullBytes, &at)
			if err != nil || len(r) != 0 {
				return CSRAttrs{}, fmt.Errorf("%w: item %d: attribute: %v", ErrCSRAttrs, i, err)
			}
			out.Attributes = append(out.Attributes, at)
		default:
			return CSRAttrs{}, fmt.Errorf("%w: item %d has tag %d, want OID or Attribute", ErrCSRAttrs, i, item.Tag)
		}
	}
	return out, nil
}
