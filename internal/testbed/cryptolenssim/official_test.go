package cryptolenssim_test

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// clientsDir holds the official clients' package files; `make node-deps` installs them.
var clientsDir = filepath.Join("..", "officialclients")

// Cryptolens' official Node client (npm cryptolens 1.0.11), which nobody here wrote,
// creates a key with its own defaults, reads it back signed and verifies the signature
// with the public key the simulator publishes, and changes its notes.
func TestOfficialNodeClient(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(filepath.Join(clientsDir, "node_modules", "cryptolens")); err != nil {
		t.Fatalf("the official Node client is not installed (run `make node-deps`): %v", err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not installed: %v", err)
	}
	b := setup(t)
	pub, err := b.sim.PublicKeyXML()
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(node, "cryptolens-node.js", b.srv.URL, admin, strconv.Itoa(productID), pub)
	cmd.Dir = clientsDir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node client: %v\n%s", err, stderr.String())
	}
	var got struct {
		Created string `json:"created"`
		License struct {
			Key             string  `json:"key"`
			ProductID       int     `json:"productId"`
			Period          int     `json:"period"`
			Days            float64 `json:"days"`
			F1, F2, F3      bool
			Notes           *string `json:"notes"`
			MaxNoOfMachines int     `json:"maxNoOfMachines"`
			Block           bool    `json:"block"`
			SignDate        int64   `json:"signDate"`
		} `json:"license"`
		NotesAfterChange    string `json:"notesAfterChange"`
		TamperedKeyVerified bool   `json:"tamperedKeyVerified"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node output %q: %v", out, err)
	}

	k, ok := b.sim.Key(productID, got.Created)
	if !ok {
		t.Fatalf("the key the client created, %q, is not in the simulator", got.Created)
	}
	l := got.License
	if l.Key != got.Created || l.ProductID != productID || l.Period != 30 || l.Days != 30 {
		t.Errorf("signed license: got key %q product %d period %d days %v, want %q %d 30 30",
			l.Key, l.ProductID, l.Period, l.Days, got.Created, productID)
	}
	if !l.F1 || l.F2 || !l.F3 || l.MaxNoOfMachines != 2 || l.Block {
		t.Errorf("signed license: got F1 %v F2 %v F3 %v machines %d block %v, want true false true 2 false",
			l.F1, l.F2, l.F3, l.MaxNoOfMachines, l.Block)
	}
	if l.Notes == nil || *l.Notes != "made by node" {
		t.Errorf("signed license notes: got %v, want %q", l.Notes, "made by node")
	}
	if l.SignDate != t0.Unix() {
		t.Errorf("SignDate: got %d, want %d (the simulator's clock in Unix seconds)", l.SignDate, t0.Unix())
	}
	if got.NotesAfterChange != "changed by node" || k.Notes != "changed by node" {
		t.Errorf("ChangeNotes: client read %q, simulator has %q, want %q", got.NotesAfterChange, k.Notes, "changed by node")
	}
	if got.TamperedKeyVerified {
		t.Error("a tampered public key verified the signature: the simulator does not really sign")
	}
}

// A signed GetKey answer verifies as every official SDK verifies it: RSA PKCS#1 v1.5 with
// SHA-256 over the base64-decoded licenseKey, with the key from PublicKeyXML; and the
// license JSON has every field the Python SDK indexes.
func TestSignedGetKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	key := b.create(t, "Period", 10, "F2", "True", "CustomerId", "None", "AllowedMachines", "null")

	a := b.call(t, "/api//key/getkey/", admin, "ProductId", productID, "Key", key, "Sign", "True", "SignMethod", 1)
	if a.result() != 0 {
		t.Fatalf("signed GetKey: %s", a.raw)
	}
	raw, err := base64.StdEncoding.DecodeString(a.body["licenseKey"].(string))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := base64.StdEncoding.DecodeString(a.body["signature"].(string))
	if err != nil {
		t.Fatal(err)
	}
	pubXML, err := b.sim.PublicKeyXML()
	if err != nil {
		t.Fatal(err)
	}
	var x struct{ Modulus, Exponent string }
	if err := xml.Unmarshal([]byte(pubXML), &x); err != nil {
		t.Fatal(err)
	}
	n, _ := base64.StdEncoding.DecodeString(x.Modulus)
	e, _ := base64.StdEncoding.DecodeString(x.Exponent)
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if pub.N.BitLen() != 2048 {
		t.Errorf("modulus: got %d bits, want 2048 (the Python SDK assumes 256 bytes)", pub.N.BitLen())
	}
	digest := sha256.Sum256(raw)
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
		t.Errorf("signature over the decoded licenseKey: %v", err)
	}

	var fields map[string]any
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ProductId", "ID", "Key", "Created", "Expires", "Period", "F1", "F2", "F3", "F4",
		"F5", "F6", "F7", "F8", "Notes", "Block", "GlobalId", "Customer", "ActivatedMachines", "TrialActivation",
		"MaxNoOfMachines", "AllowedMachines", "DataObjects", "SignDate"} {
		if _, ok := fields[f]; !ok {
			t.Errorf("signed license lacks %s", f)
		}
	}
	if fields["Notes"] != nil || fields["AllowedMachines"] != nil || fields["F2"] != true {
		t.Errorf("signed license: got Notes %v AllowedMachines %v F2 %v, want null null true",
			fields["Notes"], fields["AllowedMachines"], fields["F2"])
	}
	if got, want := fields["Expires"].(float64)-fields["Created"].(float64), float64(10*86400); got != want {
		t.Errorf("Expires - Created: got %v s, want %v", got, want)
	}
}
