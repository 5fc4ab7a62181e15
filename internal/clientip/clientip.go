// Package clientip names the client of an HTTP request for per-client limits: one name
// per IPv4 address and per IPv6 /64, read from the connection or from the header a
// trusted proxy sets.
package clientip

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Key names the client at addr (host:port, or a bare host) for a per-client limit: its
// IP without port or zone, an IPv4-mapped IPv6 address as the IPv4 address, and an IPv6
// address as its /64. One host, or one customer's line, usually holds a whole /64: keyed
// by the full address, one attacker would have 2^64 fresh limits. A host that is no IP
// is its own key.
func Key(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// FromRequest returns a function that names the client of a request (as Key does): the
// connection's peer, or, behind a proxy or load balancer, the address the proxy puts in
// header, the last one in it (the one the proxy itself added: earlier ones are the
// client's to forge). A header that holds no address falls back to the peer. An empty
// header means there is no proxy.
func FromRequest(header string) func(*http.Request) string {
	return func(r *http.Request) string {
		if header != "" {
			parts := strings.Split(r.Header.Get(header), ",")
			if ip, err := netip.ParseAddr(strings.TrimSpace(parts[len(parts)-1])); err == nil {
				return Key(ip.String())
			}
		}
		return Key(r.RemoteAddr)
	}
}
