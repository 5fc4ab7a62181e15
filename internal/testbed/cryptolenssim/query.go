package cryptolenssim

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
)

// The subset of Cryptolens' GetKeys search language keysync uses: clauses joined by
// "&&" (or "and"), each one of
//
//	notes.contains("text")   block=true   block=false   key="XXXXX-..."   id=5
//
// Anything else is refused, as the real service refuses what it cannot parse.
var (
	containsRe = regexp.MustCompile(`(?i)^notes\.contains\(\s*"((?:[^"\\]|\\.)*)"\s*\)$`)
	compareRe  = regexp.MustCompile(`(?i)^(block|key|id)\s*==?\s*(.+)$`)
	andRe      = regexp.MustCompile(`(?i)\s*(?:&&|\band\b)\s*`)
)

func parseQuery(q string) (func(*Key) bool, error) {
	q = strings.TrimSpace(q)
	if q == "" {
		return func(*Key) bool { return true }, nil
	}
	var preds []func(*Key) bool
	for _, clause := range splitClauses(q) {
		p, err := parseClause(strings.TrimSpace(clause))
		if err != nil {
			return nil, err
		}
		preds = append(preds, p)
	}
	return func(k *Key) bool {
		for _, p := range preds {
			if !p(k) {
				return false
			}
		}
		return true
	}, nil
}

// splitClauses splits on && / and outside quoted strings.
func splitClauses(q string) []string {
	var out []string
	var cur strings.Builder
	inQuote := false
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\\' && inQuote && i+1 < len(q):
			cur.WriteByte(c)
			i++
			cur.WriteByte(q[i])
			continue
		case c == '"':
			inQuote = !inQuote
		case !inQuote:
			if loc := andRe.FindStringIndex(q[i:]); loc != nil && loc[0] == 0 && loc[1] > 0 {
				out = append(out, cur.String())
				cur.Reset()
				i += loc[1] - 1
				continue
			}
		}
		cur.WriteByte(c)
	}
	return append(out, cur.String())
}

func parseClause(c string) (func(*Key) bool, error) {
	if m := containsRe.FindStringSubmatch(c); m != nil {
		needle, err := strconv.Unquote(`"` + m[1] + `"`)
		if err != nil {
			return nil, err
		}
		return func(k *Key) bool { return strings.Contains(k.Notes, needle) }, nil
	}
	m := compareRe.FindStringSubmatch(c)
	if m == nil {
		return nil, errors.New("unsupported clause")
	}
	field, value := strings.ToLower(m[1]), strings.TrimSpace(m[2])
	switch field {
	case "block":
		b, err := strconv.ParseBool(strings.ToLower(value))
		if err != nil {
			return nil, err
		}
		return func(k *Key) bool { return k.Block == b }, nil
	case "key":
		s, err := strconv.Unquote(value)
		if err != nil {
			return nil, err
		}
		return func(k *Key) bool { return k.Key == s }, nil
	default: // id
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil {
			return nil, err
		}
		return func(k *Key) bool { return k.ID == n }, nil
	}
}
