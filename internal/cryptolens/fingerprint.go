package cryptolens

import (
	"crypto/sha256"
	"encoding/hex"
)

// KeyFingerprint names a license key in logs without giving it away: its first five
// characters (what an operator reads off a customer's screenshot) and eight hex digits
// of its SHA-256, which tell keys with the same start apart. The key itself is a
// credential: whoever has it activates the software, so it goes to the audit log and
// the customer, never to a log line.
func KeyFingerprint(key string) string {
	if key == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(key))
	prefix := key
	if len(prefix) > 5 {
		prefix = prefix[:5]
	}
	return prefix + "…" + hex.EncodeToString(sum[:4])
}
