package cryptolenssim

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"sync"
)

// signer holds the simulator's RSA key, made on first use: Cryptolens signs with the
// account's key and shows its public half (as .NET XML) on the account's Security page,
// from where a vendor copies it into the app.
type signer struct {
	once sync.Once
	key  *rsa.PrivateKey
	err  error
}

// rsaBits is 2048: the official Python SDK's verifier assumes a 256-byte modulus.
const rsaBits = 2048

func (g *signer) private() (*rsa.PrivateKey, error) {
	g.once.Do(func() { g.key, g.err = rsa.GenerateKey(rand.Reader, rsaBits) })
	return g.key, g.err
}

// PublicKeyXML returns the simulator's public key in the form the official SDKs take:
// <RSAKeyValue><Modulus>…</Modulus><Exponent>…</Exponent></RSAKeyValue>, both numbers
// big-endian in standard base64.
func (s *Sim) PublicKeyXML() (string, error) {
	k, err := s.signer.private()
	if err != nil {
		return "", fmt.Errorf("cryptolenssim: signing key: %w", err)
	}
	e := big.NewInt(int64(k.E)).Bytes()
	return "<RSAKeyValue><Modulus>" + base64.StdEncoding.EncodeToString(k.N.Bytes()) +
		"</Modulus><Exponent>" + base64.StdEncoding.EncodeToString(e) + "</Exponent></RSAKeyValue>", nil
}

// signedLicense is a key as GetKey renders it with SignMethod=1: PascalCase fields in
// this order, every date in Unix seconds (Cryptolens' GetKey page; the real answer kept
// in the .NET SDK's tests, SKM Test/V3/TestKey.cs). The Python SDK indexes every field,
// so none may be missing.
type signedLicense struct {
	ProductID         int              `json:"ProductId"`
	ID                int64            `json:"ID"`
	Key               string           `json:"Key"`
	Created           int64            `json:"Created"`
	Expires           int64            `json:"Expires"`
	Period            int              `json:"Period"`
	F1                bool             `json:"F1"`
	F2                bool             `json:"F2"`
	F3                bool             `json:"F3"`
	F4                bool             `json:"F4"`
	F5                bool             `json:"F5"`
	F6                bool             `json:"F6"`
	F7                bool             `json:"F7"`
	F8                bool             `json:"F8"`
	Notes             *string          `json:"Notes"`
	Block             bool             `json:"Block"`
	GlobalID          int64            `json:"GlobalId"`
	Customer          *signedCustomer  `json:"Customer"`
	ActivatedMachines []any            `json:"ActivatedMachines"`
	TrialActivation   bool             `json:"TrialActivation"`
	MaxNoOfMachines   int              `json:"MaxNoOfMachines"`
	AllowedMachines   *string          `json:"AllowedMachines"`
	DataObjects       []map[string]any `json:"DataObjects"`
	SignDate          int64            `json:"SignDate"`
}

type signedCustomer struct {
	ID          int    `json:"Id"`
	Name        string `json:"Name"`
	Email       string `json:"Email"`
	CompanyName string `json:"CompanyName"`
	Created     int64  `json:"Created"`
}

// signedKey answers GetKey with Sign=true&SignMethod=1: licenseKey is the base64 of the
// compact JSON above and signature is RSA PKCS#1 v1.5 with SHA-256 over those decoded
// bytes (not over the base64 text), as every official SDK verifies it.
func (s *Sim) signedKey(k *Key) (map[string]any, string, bool, error) {
	priv, err := s.signer.private()
	if err != nil {
		return nil, "", false, simError(MsgSomethingWrong)
	}
	l := signedLicense{
		ProductID: k.ProductID, ID: k.ID, Key: k.Key, Created: k.Created.Unix(), Expires: k.Expires.Unix(),
		Period: k.Period, Block: k.Block, GlobalID: k.GlobalID, ActivatedMachines: []any{},
		MaxNoOfMachines: k.MaxNoOfMachines, DataObjects: []map[string]any{}, SignDate: s.clock().Unix(),
	}
	for i, on := range []*bool{&l.F1, &l.F2, &l.F3, &l.F4, &l.F5, &l.F6, &l.F7, &l.F8} {
		*on = k.Features[i]
	}
	if k.Notes != "" {
		l.Notes = &k.Notes
	}
	if c := s.customer(k.CustomerID); c != nil {
		l.Customer = &signedCustomer{ID: c.ID, Name: c.Name, Email: c.Email, CompanyName: c.CompanyName, Created: c.Created.Unix()}
	}
	raw, err := json.Marshal(l)
	if err != nil {
		return nil, "", false, simError(MsgSomethingWrong)
	}
	digest := sha256.Sum256(raw)
	sig, err := rsa.SignPKCS1v15(rand.Reader, priv, crypto.SHA256, digest[:])
	if err != nil {
		return nil, "", false, simError(MsgSomethingWrong)
	}
	return map[string]any{
		"licenseKey": base64.StdEncoding.EncodeToString(raw),
		"signature":  base64.StdEncoding.EncodeToString(sig),
		"metadata":   nil,
	}, "", false, nil
}
