package delivery

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	texttemplate "text/template"
	"time"
)

//go:embed templates
var templates embed.FS

// DefaultPageTemplate is the license page keysync ships: plain HTML and CSS that
// works without JavaScript (the copy button appears only where a script can copy).
func DefaultPageTemplate() *htmltemplate.Template {
	return htmltemplate.Must(htmltemplate.ParseFS(templates, "templates/license.html"))
}

// ParsePageTemplate reads a replacement for the license page (KEYSYNC_LICENSE_TEMPLATE,
// an html/template file rendering PageData) and renders it once for every status, so
// that a mistake stops start-up rather than a customer's page. The error names the
// file and what is wrong.
func ParsePageTemplate(path string) (*htmltemplate.Template, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot read the file", path)
	}
	t, err := htmltemplate.New(filepath.Base(path)).Parse(string(data))
	if err != nil {
		return nil, err
	}
	for _, d := range samplePages() {
		if err := t.Execute(io.Discard, d); err != nil {
			return nil, fmt.Errorf("rendering status %s: %w", d.Status, err)
		}
	}
	return t, nil
}

// samplePages are PageData for every status, with keys of every kind.
func samplePages() []PageData {
	exp := time.Date(2030, 1, 31, 0, 0, 0, 0, time.UTC)
	lics := []License{
		{Key: "ABCDE-FGHIJ-KLMNO-PQRST", ProductID: 1001, Product: "Example Pro", Expires: &exp, Machines: 3},
		{Key: "UVWXY-ZABCD-EFGHI-JKLMN", ProductID: 1002, Product: "Example Add-on", Perpetual: true, Blocked: true},
	}
	var out []PageData
	for _, s := range Statuses {
		d := PageData{Status: s, Nonce: "sample", ResendPath: ResendPath, PortalURL: "https://example.com/portal"}
		if s == StatusReady {
			out = append(out, PageData{Status: s, Nonce: "sample"}) // sold no license
			d.Licenses = lics
		}
		if s == StatusProcessing {
			d.Refresh = 5
		}
		out = append(out, d)
	}
	return out
}

// EmailData is what the e-mail templates render.
type EmailData struct {
	// Name is the customer's name in Stripe ("" when it has none).
	Name string
	// Licenses are the keys the message carries (at least one).
	Licenses []License
	// PortalURL is the customer portal's address ("" when none is configured).
	PortalURL string
	// Resend is true for an answer to the lost-keys form, false for a new key.
	Resend bool
}

// EmailTemplates render the e-mail of keys: subject.txt and body.txt (text/template),
// body.html (html/template).
type EmailTemplates struct {
	subject, text *texttemplate.Template
	html          *htmltemplate.Template
}

// Email file names, in the template directory and in KEYSYNC_EMAIL_TEMPLATE_DIR.
const (
	emailSubject = "subject.txt"
	emailText    = "body.txt"
	emailHTML    = "body.html"
)

// DefaultEmailTemplates are the messages keysync ships.
func DefaultEmailTemplates() *EmailTemplates {
	t, err := loadEmailTemplates("")
	if err != nil {
		panic(err) // the embedded templates are tested
	}
	return t
}

// ParseEmailTemplates reads replacements from dir (KEYSYNC_EMAIL_TEMPLATE_DIR): any of
// subject.txt, body.txt and body.html; a file that is not there keeps keysync's own.
// Each is rendered once with sample keys, so that a mistake stops start-up. The error
// names the file and what is wrong.
func ParseEmailTemplates(dir string) (*EmailTemplates, error) {
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%s: not a readable directory", dir)
	}
	return loadEmailTemplates(dir)
}

func loadEmailTemplates(dir string) (*EmailTemplates, error) {
	read := func(name string) (string, string, error) {
		if dir != "" {
			p := filepath.Join(dir, name)
			b, err := os.ReadFile(p)
			if err == nil {
				return p, string(b), nil
			}
			if !errors.Is(err, fs.ErrNotExist) {
				return "", "", fmt.Errorf("%s: cannot read the file", p)
			}
		}
		b, err := templates.ReadFile("templates/email/" + name)
		return name, string(b), err
	}
	t := &EmailTemplates{}
	name, src, err := read(emailSubject)
	if err == nil {
		t.subject, err = texttemplate.New(name).Option("missingkey=error").Parse(src)
	}
	if err != nil {
		return nil, err
	}
	if name, src, err = read(emailText); err == nil {
		t.text, err = texttemplate.New(name).Option("missingkey=error").Parse(src)
	}
	if err != nil {
		return nil, err
	}
	if name, src, err = read(emailHTML); err == nil {
		t.html, err = htmltemplate.New(name).Parse(src)
	}
	if err != nil {
		return nil, err
	}
	for _, d := range sampleEmails() {
		if _, err := t.render(d); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func sampleEmails() []EmailData {
	pages := samplePages()
	var lics []License
	for _, p := range pages {
		if len(p.Licenses) > 0 {
			lics = p.Licenses
		}
	}
	return []EmailData{
		{Name: "Ada", Licenses: lics[:1], PortalURL: "https://example.com/portal"},
		{Licenses: lics},
		{Name: "Ada", Licenses: lics, Resend: true},
	}
}

// message is a rendered e-mail.
type message struct {
	Subject, Text, HTML string
}

// render renders d. The subject is one line: line breaks become spaces.
func (t *EmailTemplates) render(d EmailData) (message, error) {
	var subject, text, html bytes.Buffer
	if err := t.subject.Execute(&subject, d); err != nil {
		return message{}, err
	}
	if err := t.text.Execute(&text, d); err != nil {
		return message{}, err
	}
	if err := t.html.Execute(&html, d); err != nil {
		return message{}, err
	}
	return message{Subject: strings.Join(strings.Fields(subject.String()), " "), Text: text.String(), HTML: html.String()}, nil
}
