package console

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/keysync/keysync/internal/admin"
)

type loginPage struct {
	CSRF  string
	Next  string
	Error string
}

// loginForm shows the token form with a fresh CSRF token, kept in its own cookie: there
// is no session to tie it to yet (a forged login would log the victim in as the
// attacker).
func (c *Console) loginForm(w http.ResponseWriter, r *http.Request) {
	tok := randomToken()
	setCookie(w, r, loginCookie, tok, 600)
	c.render(w, r, http.StatusOK, "login", loginPage{CSRF: tok, Next: safeNext(r.URL.Query().Get("next"))})
}

// login checks the form's CSRF token and the admin token, then sets the session cookie.
// A wrong token is answered 401 with the form again; the token is never logged.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	ck, err := r.Cookie(loginCookie)
	if err != nil || !validCSRF(r.PostFormValue("csrf"), ck.Value) {
		c.renderError(w, r, http.StatusForbidden, "The login form has expired or did not come from the console (missing or wrong CSRF token). Open the login page again.")
		return
	}
	next := safeNext(r.PostFormValue("next"))
	who, err := c.o.Auth.Authenticate(r.RemoteAddr, r.PostFormValue("token"))
	if err != nil {
		tok := randomToken()
		setCookie(w, r, loginCookie, tok, 600)
		if te := (*admin.ThrottledError)(nil); errors.As(err, &te) {
			c.o.Log.Warn().Str("remote", r.RemoteAddr).Msg("console login throttled: too many refused tokens")
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(te.RetryAfter.Seconds()))))
			c.render(w, r, http.StatusTooManyRequests, "login", loginPage{CSRF: tok, Next: next,
				Error: "Too many wrong tokens from this address: wait a little, then try again."})
			return
		}
		c.o.Log.Warn().Str("remote", r.RemoteAddr).Msg("console login refused: unknown token")
		c.render(w, r, http.StatusUnauthorized, "login", loginPage{CSRF: tok, Next: next, Error: "That token is not an admin token of this keysync."})
		return
	}
	name, readOnly := who.Name, who.Access != admin.ReadWrite
	_, value := c.sessions.issue(name, readOnly)
	setCookie(w, r, sessionCookie, value, int(c.o.SessionTTL.Seconds()))
	setCookie(w, r, loginCookie, "", -1)
	c.o.Log.Info().Str("operator", name).Bool("read_only", readOnly).Str("remote", r.RemoteAddr).Msg("console login")
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// logout ends the session: the cookie is cleared and the session refused from now on.
func (c *Console) logout(w http.ResponseWriter, r *http.Request) (string, error) {
	c.sessions.logout(sessionOf(r))
	setCookie(w, r, sessionCookie, "", -1)
	return "/console/login?notice=logged_out", nil
}

// safeNext keeps a redirect target inside the console: a path under /console/, never
// another host ("//evil", "/\evil").
func safeNext(next string) string {
	u, err := url.Parse(next)
	if next == "" || err != nil || u.Scheme != "" || u.Host != "" || !strings.HasPrefix(u.Path, "/console/") ||
		strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/console/"
	}
	return next
}

// withNotice adds a notice code (and a count) to a console path, for the page the
// redirect lands on.
func withNotice(path, code string, n int) string {
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	path += sep + "notice=" + code
	if n >= 0 {
		path += "&n=" + strconv.Itoa(n)
	}
	return path
}

// notice returns the message for a redirect's notice code. Only known codes show, in
// words of the console's own: nothing from the URL is echoed.
func notice(q url.Values) string {
	n, _ := strconv.Atoi(q.Get("n"))
	switch q.Get("notice") {
	case "synced":
		if n == 0 {
			return "Synced now: nothing to do, every key was already as the policy wants."
		}
		return fmt.Sprintf("Synced now: %d action(s); the audit trail below shows them.", n)
	case "replayed":
		return "The event is queued again; the workers process it within seconds."
	case "replayed_all":
		return fmt.Sprintf("%d failed event(s) queued again; the workers process them within seconds.", n)
	case "logged_out":
		return "Logged out."
	}
	return ""
}
