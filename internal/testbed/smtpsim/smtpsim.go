// Package smtpsim is a real SMTP server (emersion/go-smtp) that tests start in-process on
// loopback: it keeps every message it accepts, so a test reads back what keysync sent,
// and it can refuse, defer or cut off the next messages to play a mail server's faults.
package smtpsim

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Options shape a Server.
type Options struct {
	// Username and Password, when set, are required (AUTH PLAIN) before any message.
	Username, Password string
}

// Fault is what the server does to the next message.
type Fault int

// The faults.
const (
	// DeferRecipient answers RCPT TO with 451 (try again later): nothing is accepted.
	DeferRecipient Fault = iota + 1
	// RejectRecipient answers RCPT TO with 550 (no such user): nothing is accepted.
	RejectRecipient
	// CutAfterData keeps the whole message, then closes the connection before it
	// answers: the client cannot know the message arrived.
	CutAfterData
)

// Server is an SMTP server on 127.0.0.1 that keeps what it accepts.
type Server struct {
	// Addr is host:port.
	Addr string
	opts Options

	mu       sync.Mutex
	messages []Message
	faults   []Fault
	arrived  chan struct{}
}

// Message is one message the server kept.
type Message struct {
	From string
	To   []string
	// Raw is the message as sent (headers and body).
	Raw []byte
}

// Start serves on a free loopback port until t ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{opts: opts, arrived: make(chan struct{}, 1000)}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) { return &session{s: s, conn: c}, nil }))
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true // loopback only
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = ln.Addr().String()
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s
}

// URL is a KEYSYNC_SMTP_URL for the server: plain text (it offers no TLS), with the
// credentials when it requires them.
func (s *Server) URL() string {
	u := url.URL{Scheme: "smtp", Host: s.Addr, RawQuery: "tls=none"}
	if s.opts.Username != "" {
		u.User = url.UserPassword(s.opts.Username, s.opts.Password)
	}
	return u.String()
}

// Fail makes the next messages meet faults, in order, one each.
func (s *Server) Fail(faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, faults...)
}

// Messages returns the messages kept so far, oldest first.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Wait returns once n messages are kept, or fails t after timeout.
func (s *Server) Wait(t testing.TB, n int, timeout time.Duration) []Message {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if ms := s.Messages(); len(ms) >= n {
			return ms
		}
		select {
		case <-s.arrived:
		case <-deadline:
			t.Fatalf("the SMTP server got %d messages in %s, want %d", len(s.Messages()), timeout, n)
		}
	}
}

// fault takes the fault for the message being sent, if any.
func (s *Server) fault() Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.faults) == 0 {
		return 0
	}
	f := s.faults[0]
	s.faults = s.faults[1:]
	return f
}

func (s *Server) keep(m Message) {
	s.mu.Lock()
	s.messages = append(s.messages, m)
	s.mu.Unlock()
	select {
	case s.arrived <- struct{}{}:
	default:
	}
}

type session struct {
	s      *Server
	conn   *smtp.Conn
	authed bool
	from   string
	to     []string
	fault  Fault
}

func (ss *session) AuthMechanisms() []string {
	if ss.s.opts.Username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, username, password string) error {
		if username != ss.s.opts.Username || password != ss.s.opts.Password {
			return errors.New("invalid credentials")
		}
		ss.authed = true
		return nil
	}), nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if ss.s.opts.Username != "" && !ss.authed {
		return smtp.ErrAuthRequired
	}
	ss.from, ss.fault = from, ss.s.fault()
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	switch ss.fault {
	case DeferRecipient:
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
	case RejectRecipient:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.s.keep(Message{From: ss.from, To: ss.to, Raw: raw})
	if ss.fault == CutAfterData {
		_ = ss.conn.Close()
		return errors.New("connection cut")
	}
	return nil
}

func (ss *session) Reset() { ss.from, ss.to = "", nil }

func (ss *session) Logout() error { return nil }

// Header returns the message's header (decoded: an encoded-word subject is plain).
func (m Message) Header() mail.Header {
	msg, err := mail.ReadMessage(bytes.NewReader(m.Raw))
	if err != nil {
		return mail.Header{}
	}
	dec := new(mime.WordDecoder)
	for k, vs := range msg.Header {
		for i, v := range vs {
			if d, err := dec.DecodeHeader(v); err == nil {
				vs[i] = d
			}
		}
		msg.Header[k] = vs
	}
	return msg.Header
}

// Part returns the decoded body of the message's part of the media type
// ("text/plain", "text/html"), or "" when it has none.
func (m Message) Part(mediaType string) string {
	msg, err := mail.ReadMessage(bytes.NewReader(m.Raw))
	if err != nil {
		return ""
	}
	return part(msg.Header.Get("Content-Type"), msg.Header.Get("Content-Transfer-Encoding"), msg.Body, mediaType)
}

func part(contentType, encoding string, body io.Reader, want string) string {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return ""
	}
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err != nil {
				return ""
			}
			if got := part(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p, want); got != "" {
				return got
			}
		}
	}
	if mt != want {
		return ""
	}
	switch strings.ToLower(encoding) {
	case "quoted-printable":
		body = quotedprintable.NewReader(body)
	case "base64":
		body = base64.NewDecoder(base64.StdEncoding, body)
	}
	b, _ := io.ReadAll(body)
	return string(b)
}
