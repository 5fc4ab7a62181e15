package localpg_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/keysync/keysync/internal/testbed/localpg"
)

// A throwaway cluster starts, serves, survives a crash-restart and is removed.
func TestThrowawayCluster(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := localpg.StartThrowaway(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	query := func() (int, error) {
		conn, err := pgx.Connect(ctx, s.URL)
		if err != nil {
			return 0, err
		}
		defer conn.Close(ctx)
		var n int
		err = conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n)
		return n, err
	}
	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if err := s.Halt(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := query(); err == nil {
		t.Fatal("got an answer from a halted server, want a connection error")
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := query(); err != nil || n != 2 {
		t.Fatalf("after restart: got %d, %v, want the 2 committed rows", n, err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestFindPrefersDatabaseURL(t *testing.T) {
	t.Parallel()
	s, err := localpg.Find(context.Background(), func(k string) string {
		if k == "DATABASE_URL" {
			return "postgres://u@db.example:5432/x"
		}
		return ""
	})
	if err != nil || s.URL != "postgres://u@db.example:5432/x" || s.Kind != "DATABASE_URL" {
		t.Fatalf("got %+v, %v, want DATABASE_URL used as is", s, err)
	}
}
