// Package migrations holds keysync's goose SQL migrations, embedded into the binary.
package migrations

import "embed"

// FS is the directory of goose migration files, numbered in the order they apply.
//
//go:embed *.sql
var FS embed.FS
