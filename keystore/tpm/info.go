package tpm

import (
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeagent/edgeagent/keystore"
)

// readInfo asks the TPM who made it, for status output. It is also the
// first command sent, so it tells early whether the peer is a working TPM.
func (s *Store) readInfo() (keystore.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	first := uint32(tpm2.TPMPTManufacturer)
	last := uint32(tpm2.TPMPTFirmwareVersion2)
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapTPMProperties,
		Property:      first,
		PropertyCount: last - first + 1,
	}.Execute(s.tpm)
	if err != nil {
		return keystore.Info{}, classify(opOther, "read TPM properties", err, s.env)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return keystore.Info{}, fmt.Errorf("keystore: tpm: read TPM properties: %w", err)
	}
	vals := map[tpm2.TPMPT]uint32{}
	for _, p := range props.TPMProperty {
		vals[p.Property] = p.Value
	}
	d := map[string]string{
		"manufacturer": fourCC(vals[tpm2.TPMPTManufacturer]),
		"vendor": fourCC(vals[tpm2.TPMPTVendorString1]) + fourCC(vals[tpm2.TPMPTVendorString2]) +
			fourCC(vals[tpm2.TPMPTVendorString3]) + fourCC(vals[tpm2.TPMPTVendorString4]),
		"firmware": firmwareVersion(vals[tpm2.TPMPTFirmwareVersion1], vals[tpm2.TPMPTFirmwareVersion2]),
		// Vendors encode the version differently (libtpms puts a date in
		// VERSION_1), so the raw values go along for support cases.
		"firmware_raw": fmt.Sprintf("0x%08x 0x%08x", vals[tpm2.TPMPTFirmwareVersion1], vals[tpm2.TPMPTFirmwareVersion2]),
		"dir":          s.opts.Dir,
		"key":          "owner hierarchy, ECC P-256 SRK child",
	}
	if s.opts.Address != "" {
		d["address"] = s.opts.Address
	} else {
		d["device"] = s.opts.Device
	}
	if s.persistent() {
		d["persistent_handle"] = fmt.Sprintf("0x%08x", s.opts.PersistentHandle)
	}
	return keystore.Info{Backend: "tpm", Details: d}, nil
}

// fourCC decodes a TPM property that packs up to four ASCII characters,
// dropping the NUL and space padding vendors use.
func fourCC(v uint32) string {
	b := []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
	var sb strings.Builder
	for _, c := range b {
		if c >= 0x20 && c < 0x7f {
			sb.WriteByte(c)
		}
	}
	return strings.TrimSpace(sb.String())
}

// firmwareVersion formats TPM_PT_FIRMWARE_VERSION_1 and _2 the way vendors
// and tpm2_getcap present them: four 16-bit parts, major.minor.build.patch.
func firmwareVersion(v1, v2 uint32) string {
	return fmt.Sprintf("%d.%d.%d.%d", v1>>16, v1&0xffff, v2>>16, v2&0xffff)
}
