package clientip_test

import (
	"net/http"
	"testing"

	"github.com/keysync/keysync/internal/clientip"
)

// An IPv4 client is its address; an IPv6 client is its /64, whatever the port, zone or
// mapping: the addresses of one /64 share a limit, the next /64 has its own.
func TestKey(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]string{
		"192.0.2.1:443":                 "192.0.2.1",
		"192.0.2.1":                     "192.0.2.1",
		"[::ffff:192.0.2.1]:80":         "192.0.2.1",
		"[2001:db8::1]:443":             "2001:db8::/64",
		"[2001:db8::ffff:1:2:3]:80":     "2001:db8::/64",
		"2001:db8:0:0:1234:5678:9abc:1": "2001:db8::/64",
		"[fe80::1%eth0]:80":             "fe80::/64",
		"[2001:db8:0:1::1]:443":         "2001:db8:0:1::/64",
		"not-an-ip":                     "not-an-ip",
	} {
		if got := clientip.Key(addr); got != want {
			t.Errorf("Key(%q): got %q, want %q", addr, got, want)
		}
	}
}

// Behind a proxy the client is the address the proxy added last; without the header
// configured, or with a value that is no address, the connection's peer. Either way
// an IPv6 client is its /64.
func TestFromRequest(t *testing.T) {
	t.Parallel()
	direct, proxied := clientip.FromRequest(""), clientip.FromRequest("X-Forwarded-For")
	for name, tc := range map[string]struct {
		f      func(*http.Request) string
		remote string
		xff    string
		want   string
	}{
		"direct":            {direct, "10.0.0.7:5555", "203.0.113.9", "10.0.0.7"},
		"direct IPv6":       {direct, "[2001:db8:1:2:3:4:5:6]:5555", "", "2001:db8:1:2::/64"},
		"proxied":           {proxied, "10.0.0.7:5555", "198.51.100.1, 203.0.113.9", "203.0.113.9"},
		"proxied IPv6":      {proxied, "10.0.0.7:5555", "198.51.100.1, 2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		"forged":            {proxied, "10.0.0.7:5555", "not an address", "10.0.0.7"},
		"forged before":     {proxied, "10.0.0.7:5555", "2001:db8::1, 203.0.113.9", "203.0.113.9"},
		"no header":         {proxied, "10.0.0.7:5555", "", "10.0.0.7"},
		"address with port": {proxied, "10.0.0.7:5555", "203.0.113.9:80", "10.0.0.7"},
	} {
		r, _ := http.NewRequest("GET", "/", nil)
		r.RemoteAddr = tc.remote
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := tc.f(r); got != tc.want {
			t.Errorf("%s: got %q, want %q", name, got, tc.want)
		}
	}
}
