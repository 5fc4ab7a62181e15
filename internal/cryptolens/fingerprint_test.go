package cryptolens

import (
	"strings"
	"testing"
)

func TestKeyFingerprint(t *testing.T) {
	t.Parallel()
	a, b := KeyFingerprint("ABCDE-FGHIJ-KLMNO-PQRST"), KeyFingerprint("ABCDE-FGHIJ-KLMNO-PQRSU")
	if strings.Contains(a, "FGHIJ") || !strings.HasPrefix(a, "ABCDE…") || len(a) != len("ABCDE…")+8 {
		t.Fatalf("got %q, want the key's first five characters and eight hex digits only", a)
	}
	if a == b || a != KeyFingerprint("ABCDE-FGHIJ-KLMNO-PQRST") {
		t.Fatalf("got %q and %q: want one fingerprint per key, different for different keys", a, b)
	}
	if KeyFingerprint("") != "" || KeyFingerprint("AB") != "AB…"+KeyFingerprint("AB")[len("AB…"):] {
		t.Fatalf("short keys: got %q, %q", KeyFingerprint(""), KeyFingerprint("AB"))
	}
}
