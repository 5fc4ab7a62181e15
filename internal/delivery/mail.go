package delivery

import (
	"context"
	"errors"
	"fmt"
	netmail "net/mail"
	"net/url"
	"strconv"
	"strings"
	"time"

	mail "github.com/wneessen/go-mail"

	"github.com/keysync/keysync/internal/failure"
)

// TLS modes of an SMTP connection.
const (
	// TLSImplicit: TLS from the first byte (smtps://, port 465 by default).
	TLSImplicit = "implicit"
	// TLSRequired: STARTTLS, and no mail without it (smtp://, port 587 by default).
	TLSRequired = "required"
	// TLSOpportunistic: STARTTLS when the server offers it, plain otherwise.
	TLSOpportunistic = "opportunistic"
	// TLSNone: plain text (a relay on the same host or network).
	TLSNone = "none"
)

// SMTPConfig is where and how keysync hands e-mail over (KEYSYNC_SMTP_URL).
type SMTPConfig struct {
	Host string
	Port int
	// TLS is one of the TLS modes.
	TLS string
	// Username and Password authenticate (the server's best mechanism); empty: none.
	Username, Password string
}

// ParseSMTPURL reads smtp://[user[:password]@]host[:port][?tls=required|opportunistic|none]
// or smtps://[user[:password]@]host[:port]. User and password are URL-encoded. Its
// errors never contain the password.
func ParseSMTPURL(raw string) (SMTPConfig, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return SMTPConfig{}, errors.New("is not a URL (smtp://user:password@host:587)")
	}
	c := SMTPConfig{Host: u.Hostname()}
	switch u.Scheme {
	case "smtp":
		c.Port, c.TLS = 587, TLSRequired
	case "smtps":
		c.Port, c.TLS = 465, TLSImplicit
	default:
		return SMTPConfig{}, errors.New("must start with smtp:// or smtps://")
	}
	if c.Host == "" {
		return SMTPConfig{}, errors.New("names no host")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return SMTPConfig{}, errors.New("has an invalid port")
		}
		c.Port = n
	}
	if u.User != nil {
		c.Username = u.User.Username()
		c.Password, _ = u.User.Password()
	}
	for k, v := range u.Query() {
		switch {
		case k == "tls" && u.Scheme == "smtp" && (v[0] == TLSRequired || v[0] == TLSOpportunistic || v[0] == TLSNone):
			c.TLS = v[0]
		case k == "tls":
			return SMTPConfig{}, errors.New("tls must be required, opportunistic or none (smtp:// only)")
		default:
			return SMTPConfig{}, fmt.Errorf("has an unknown option %q", k)
		}
	}
	return c, nil
}

// Mail is one message to send.
type Mail struct {
	To, ToName string
	Subject    string
	Text, HTML string
	// MessageID, if set, is the Message-ID (without angle brackets); the same message
	// sent twice then carries the same one, which mail clients can fold together.
	MessageID string
}

// Delivery outcomes a Sender's error may match. Anything else is ErrRetryable
// (failure.ErrRetryable) and provably sent nothing: the message may be tried again.
var (
	// ErrRejected: the server refused the message for good (an unknown recipient, a
	// refused message); nothing was delivered and a retry would fail the same way.
	ErrRejected = failure.NewPermanent("e-mail refused")
	// ErrOutcomeUnknown: the connection broke while the server held the whole message:
	// it may have been delivered. Sending again could deliver it twice.
	ErrOutcomeUnknown = failure.NewPermanent("e-mail outcome unknown")
	// ErrNotSent: nothing left keysync (no connection, TLS or authentication failed,
	// the server answered "try later").
	ErrNotSent = failure.NewRetryable("e-mail not sent")
)

// Sender sends e-mail.
type Sender interface {
	// Send sends m. Its errors match ErrRejected, ErrOutcomeUnknown or ErrNotSent.
	Send(ctx context.Context, m Mail) error
}

// SMTP sends e-mail through an SMTP server, one connection a message (keys are few).
type SMTP struct {
	cfg     SMTPConfig
	from    string
	timeout time.Duration
}

// NewSMTP returns a Sender through cfg's server with from as the sender
// (KEYSYNC_EMAIL_FROM: "shop@example.com" or "Example Shop <shop@example.com>"). It
// returns an error for a sender that is no e-mail address.
func NewSMTP(cfg SMTPConfig, from string) (*SMTP, error) {
	if _, err := netmail.ParseAddress(from); err != nil {
		return nil, errors.New("is not an e-mail address (shop@example.com or Example Shop <shop@example.com>)")
	}
	return &SMTP{cfg: cfg, from: from, timeout: 30 * time.Second}, nil
}

// Domain is the domain of the sender's address (for Message-IDs).
func (s *SMTP) Domain() string {
	a, _ := netmail.ParseAddress(s.from)
	if a == nil {
		return "keysync.invalid"
	}
	return a.Address[strings.LastIndexByte(a.Address, '@')+1:]
}

// Send sends m. The error says whether the message may have been delivered (see the
// package's e-mail errors); it never contains the password.
func (s *SMTP) Send(ctx context.Context, m Mail) error {
	msg := mail.NewMsg()
	if err := msg.From(s.from); err != nil {
		return fmt.Errorf("%w: sender: %v", ErrRejected, err)
	}
	if err := msg.AddToFormat(m.ToName, m.To); err != nil {
		return fmt.Errorf("%w: recipient: %v", ErrRejected, err)
	}
	msg.Subject(m.Subject)
	msg.SetDate()
	if m.MessageID != "" {
		msg.SetMessageIDWithValue(m.MessageID)
	} else {
		msg.SetMessageID()
	}
	msg.SetBodyString(mail.TypeTextPlain, m.Text)
	if m.HTML != "" {
		msg.AddAlternativeString(mail.TypeTextHTML, m.HTML)
	}

	opts := []mail.Option{mail.WithPort(s.cfg.Port), mail.WithTimeout(s.timeout)}
	switch s.cfg.TLS {
	case TLSImplicit:
		opts = append(opts, mail.WithSSL())
	case TLSOpportunistic:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSOpportunistic))
	case TLSNone:
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	default:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
	}
	if s.cfg.Username != "" {
		// The server's best mechanism; over plain text only challenge-response ones,
		// except PLAIN to a server on this host (a local relay: go-mail refuses it
		// elsewhere).
		auth := mail.SMTPAuthAutoDiscover
		if s.cfg.TLS == TLSNone {
			auth = mail.SMTPAuthPlain
		}
		opts = append(opts, mail.WithSMTPAuth(auth), mail.WithUsername(s.cfg.Username), mail.WithPassword(s.cfg.Password))
	}
	client, err := mail.NewClient(s.cfg.Host, opts...)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrNotSent, s.scrub(err))
	}
	err = client.DialAndSendWithContext(ctx, msg)
	if err == nil || msg.IsDelivered() {
		return nil // delivered; a failure after that (RSET, QUIT) changes nothing
	}
	return classify(err, s.scrub(err))
}

// classify says what a failed send means for the message: refused, perhaps
// delivered, or not sent.
func classify(err error, text string) error {
	var se *mail.SendError
	if !errors.As(err, &se) {
		return fmt.Errorf("%w: %s", ErrNotSent, text) // dial, TLS, authentication
	}
	code := se.ErrorCode()
	switch {
	case (se.Reason == mail.ErrWriteContent || se.Reason == mail.ErrSMTPDataClose) && code == 0:
		// No reply to the end of the message: the server may have queued it.
		return fmt.Errorf("%w: %s", ErrOutcomeUnknown, text)
	case code >= 500 && (se.Reason == mail.ErrSMTPRcptTo || se.Reason == mail.ErrSMTPDataClose):
		return fmt.Errorf("%w: %s", ErrRejected, text)
	}
	return fmt.Errorf("%w: %s", ErrNotSent, text)
}

// scrub keeps the password out of an error's text.
func (s *SMTP) scrub(err error) string {
	if s.cfg.Password == "" {
		return err.Error()
	}
	return strings.ReplaceAll(err.Error(), s.cfg.Password, "[password]")
}
