package revocation

import (
	"strings"
	"testing"
)

func TestDecodePage(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"empty", `{"cursor":0,"events":[]}`, true},
		{"one", `{"cursor":3,"events":[{"seq":3,"kind":"revoke","serial":"ab01"}]}`, true},
		{"unknown kind", `{"cursor":3,"events":[{"seq":3,"kind":"hold","serial":"ab01"}]}`, false},
		{"upper-case serial", `{"cursor":3,"events":[{"seq":3,"kind":"revoke","serial":"AB01"}]}`, false},
		{"past cursor", `{"cursor":2,"events":[{"seq":3,"kind":"revoke","serial":"ab01"}]}`, false},
		{"out of order", `{"cursor":5,"events":[{"seq":4,"kind":"revoke","serial":"ab"},{"seq":3,"kind":"revoke","serial":"cd"}]}`, false},
		{"not json", `<html>`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodePage(strings.NewReader(tc.in))
			if (err == nil) != tc.ok {
				t.Fatalf("DecodePage(%s): %v, want ok %v", tc.in, err, tc.ok)
			}
		})
	}
}

func TestSetApply(t *testing.T) {
	s := NewSet()
	rev := func(seq int64, sn string) Event { return Event{Seq: seq, Kind: KindRevoke, Serial: sn} }
	for _, tc := range []struct {
		name      string
		page      Page
		wantAdded int
		revoked   map[string]bool
	}{
		{"revoke two", Page{Cursor: 2, Events: []Event{rev(1, "a1"), rev(2, "b2")}}, 2, map[string]bool{"a1": true, "b2": true}},
		{"replay is ignored", Page{Cursor: 2, Events: []Event{rev(2, "b2")}}, 0, map[string]bool{"a1": true, "b2": true}},
		{"unrevoke", Page{Cursor: 3, Events: []Event{{Seq: 3, Kind: KindUnrevoke, Serial: "a1"}}}, 0, map[string]bool{"a1": false, "b2": true}},
		{"again", Page{Cursor: 4, Events: []Event{rev(4, "a1")}}, 1, map[string]bool{"a1": true}},
	} {
		if got := len(s.Apply(tc.page)); got != tc.wantAdded {
			t.Errorf("%s: %d added, want %d", tc.name, got, tc.wantAdded)
		}
		for sn, want := range tc.revoked {
			if s.RevokedSerial(sn) != want {
				t.Errorf("%s: %s revoked %v, want %v", tc.name, sn, !want, want)
			}
		}
		if s.Cursor() != tc.page.Cursor {
			t.Errorf("%s: cursor %d, want %d", tc.name, s.Cursor(), tc.page.Cursor)
		}
	}
}

func FuzzDecodePage(f *testing.F) {
	f.Add(`{"cursor":3,"events":[{"seq":3,"kind":"revoke","serial":"ab01"}]}`)
	f.Fuzz(func(t *testing.T, in string) {
		p, err := DecodePage(strings.NewReader(in))
		if err == nil {
			NewSet().Apply(p)
		}
	})
}
