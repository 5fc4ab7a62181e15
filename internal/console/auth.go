package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/keysync/keysync/internal/admin"
)

// Auth says who holds a token: the admin listener's Guard (admin.Guard), so the console
// and the admin API share the tokens, their names and the throttling of failures.
type Auth interface {
	// Authenticate returns who presented token from client (the request's remote
	// address): admin.ErrUnauthenticated for an unknown token (the empty one included)
	// and an *admin.ThrottledError while client has failed too often.
	Authenticate(client, token string) (admin.Principal, error)
}

// The cookies: the session, and the login form's own CSRF token (there is no session
// to tie it to yet).
const (
	sessionCookie = "keysync_console"
	loginCookie   = "keysync_console_login"
	cookiePath    = "/console/"
)

// session is what the signed cookie carries: who, what they may do, until when, and
// an id that ties CSRF tokens and logout to this session. Never the token.
type session struct {
	ID       string `json:"i"`
	Name     string `json:"n"`
	ReadOnly bool   `json:"r"`
	Expires  int64  `json:"e"`
}

// sessions signs and checks session cookies (HMAC-SHA256) and remembers the ones
// logged out until they expire.
type sessions struct {
	key []byte
	ttl time.Duration
	now func() time.Time

	mu        sync.Mutex
	loggedOut map[string]int64 // session id -> expiry (unix)
}

var errBadSession = errors.New("no valid session")

// issue returns a new session for name and its cookie value.
func (s *sessions) issue(name string, readOnly bool) (session, string) {
	var id [16]byte
	_, _ = rand.Read(id[:])
	sess := session{ID: hex.EncodeToString(id[:]), Name: name, ReadOnly: readOnly, Expires: s.now().Add(s.ttl).Unix()}
	payload, _ := json.Marshal(sess)
	enc := base64.RawURLEncoding.EncodeToString(payload)
	return sess, enc + "." + base64.RawURLEncoding.EncodeToString(s.mac("session", enc))
}

// check returns the session a cookie value carries, or errBadSession when it is
// malformed, forged, expired or logged out.
func (s *sessions) check(value string) (session, error) {
	enc, sig, ok := strings.Cut(value, ".")
	if !ok {
		return session{}, errBadSession
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac("session", enc)) {
		return session{}, errBadSession
	}
	payload, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return session{}, errBadSession
	}
	var sess session
	if json.Unmarshal(payload, &sess) != nil || sess.ID == "" || s.now().Unix() >= sess.Expires {
		return session{}, errBadSession
	}
	s.mu.Lock()
	_, out := s.loggedOut[sess.ID]
	s.mu.Unlock()
	if out {
		return session{}, errBadSession
	}
	return sess, nil
}

// logout refuses the session from now on, in this process, until it would have
// expired anyway; the browser's cookie is cleared too.
func (s *sessions) logout(sess session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now().Unix()
	for id, exp := range s.loggedOut {
		if exp <= now {
			delete(s.loggedOut, id)
		}
	}
	s.loggedOut[sess.ID] = sess.Expires
}

// csrf is the session's CSRF token: every form of the session carries it, and a POST
// without it, or with another session's, is refused.
func (s *sessions) csrf(sess session) string {
	return base64.RawURLEncoding.EncodeToString(s.mac("csrf", sess.ID))
}

func (s *sessions) mac(purpose, msg string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(purpose + "\x00" + msg))
	return m.Sum(nil)
}

// validCSRF compares a form's CSRF token with the expected one in constant time; an
// empty one is never valid.
func validCSRF(got, want string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// setCookie sets a console cookie: HttpOnly, SameSite=Strict, Secure when the request
// came over TLS, limited to the console's paths. maxAge < 0 deletes it.
func setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: cookiePath, MaxAge: maxAge, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
}

// randomToken returns 16 random bytes, URL-safe.
func randomToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
