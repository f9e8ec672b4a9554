package agent

import (
	"encoding/json"
	"testing"
)

func TestAppendEnvelopeMatchesJSONMarshal(t *testing.T) {
	cases := []struct{ id, dev, ts, data string }{
		{"dev-1-0a1b2c3d4e5f-1", "dev-1", "2026-11-22T10:00:00.123456789Z", `{"temp_c":21.5}`},
		{"a.b_c-ff-99", "a.b_c", "2026-01-01T00:00:00Z", `{"nested":{"list":[1,2,"x"]},"s":"\u00e9\"q"}`},
	}
	for _, c := range cases {
		want, err := json.Marshal(envelope{ID: c.id, DeviceID: c.dev, Time: c.ts, Data: json.RawMessage(c.data)})
		if err != nil {
			t.Fatal(err)
		}
		if got := appendEnvelope(nil, c.id, c.dev, c.ts, []byte(c.data)); string(got) != string(want) {
			t.Fatalf("got  %s\nwant %s", got, want)
		}
	}
}
