package reconcile

import (
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/keysync/keysync/internal/cryptolens"
	"github.com/keysync/keysync/internal/license"
)

// The sweep's packed forms keep everything drift detection reads.
func TestPackedFormsRoundTrip(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		d := license.Desired{Mapped: true, ProductID: 1 + rng.IntN(1<<20), NeedKey: rng.IntN(2) == 0, Block: rng.IntN(2) == 0,
			Features: map[int]bool{}}
		if rng.IntN(3) > 0 {
			d.Expires = time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)).UTC()
		}
		if rng.IntN(2) == 0 {
			m := rng.IntN(1000)
			d.Machines = &m
		}
		for f := 1; f <= 8; f++ {
			if rng.IntN(2) == 0 {
				d.Features[f] = rng.IntN(2) == 0
			}
		}
		if got := packDesire(d).unpack(); !reflect.DeepEqual(got, d) {
			t.Fatalf("desire: got %+v, want %+v", got, d)
		}
		k := cryptolens.Key{Key: "ABCDE-FGHIJ", Expires: time.Unix(rng.Int64N(4e9), 0).UTC(), Block: rng.IntN(2) == 0, MaxNoOfMachines: rng.IntN(100)}
		for i := range k.Features {
			k.Features[i] = rng.IntN(2) == 0
		}
		want := license.Key{Exists: true, Key: k.Key, Expires: k.Expires, Blocked: k.Block, Features: k.Features, MaxMachines: k.MaxNoOfMachines}
		if got := briefKey(k).license(); !reflect.DeepEqual(got, want) {
			t.Fatalf("key: got %+v, want %+v", got, want)
		}
	}
}
