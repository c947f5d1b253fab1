// Package storetest is the contract of firmware.Catalog as one test
// suite, run by every adapter's tests (firmware/boltstore now, a JetStream
// KV catalog in cluster mode): the same table of cases for each.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/firmware"
)

// Opener opens the firmware.Catalog kept in dir (empty at first).
// Contract closes every catalog it opens, and opens a dir again after
// closing it, to check that what was acknowledged survives.
type Opener func(tb testing.TB, dir string) Catalog

// Catalog is a firmware.Catalog with the Close its opener calls (the
// Store never closes its catalog): Close releases it, bounded by ctx, and
// is idempotent; every method fails with ErrClosed after it.
type Catalog interface {
	firmware.Catalog
	Close(ctx context.Context) error
}

// op is one call of a case: exactly one of create, replace and remove is
// set. err is the error it must wrap (nil: success); a remove must also
// return the record in removed.
type op struct {
	create  *firmware.Image
	replace []firmware.Image
	remove  firmware.Version
	removed *firmware.Image
	err     error
}

// image returns a record for version v whose fields all differ from
// another version's.
func image(v string, notes string) firmware.Image {
	return firmware.Image{
		Version:   firmware.Version(v),
		HW:        "m1",
		Size:      int64(len(v)) * 1000,
		SHA256:    strings.Repeat(fmt.Sprintf("%02x", len(v)), 32),
		Notes:     notes,
		Created:   time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC),
		Signature: []byte("signature of " + v),
	}
}

// Contract runs the contract of firmware.Catalog (see its documentation)
// against the catalogs open makes.
func Contract(t *testing.T, open Opener) {
	t.Helper()
	a, b := image("1.0.0", "first\nline"), image("1.10.0-rc.1+build.5", "")
	a2 := a
	a2.Signature, a2.Notes = []byte("re-signed"), "after a key change"
	tests := []struct {
		name string
		ops  []op
		want []firmware.Image
	}{
		{name: "empty"},
		{
			name: "create keeps every field",
			ops:  []op{{create: &a}, {create: &b}},
			want: []firmware.Image{a, b},
		},
		{
			name: "create of a taken version is refused",
			ops:  []op{{create: &a}, {create: &a2, err: firmware.ErrExists}},
			want: []firmware.Image{a},
		},
		{
			name: "delete returns the record",
			ops:  []op{{create: &a}, {create: &b}, {remove: a.Version, removed: &a}, {remove: a.Version, err: firmware.ErrNotFound}},
			want: []firmware.Image{b},
		},
		{
			name: "delete of a missing version",
			ops:  []op{{remove: "9.9.9", err: firmware.ErrNotFound}},
		},
		{
			name: "replace overwrites existing records only",
			ops:  []op{{create: &a}, {replace: []firmware.Image{a2, b}}},
			want: []firmware.Image{a2},
		},
		{
			name: "a version can be created again after delete",
			ops:  []op{{create: &a}, {remove: a.Version, removed: &a}, {create: &a2}},
			want: []firmware.Image{a2},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := open(t, dir)
			for i, o := range tc.ops {
				var err error
				switch {
				case o.create != nil:
					err = c.Create(t.Context(), *o.create)
				case o.replace != nil:
					err = c.Replace(t.Context(), o.replace...)
				default:
					var got firmware.Image
					got, err = c.Delete(t.Context(), o.remove)
					if err == nil && (o.removed == nil || !same(got, *o.removed)) {
						t.Errorf("op %d: Delete(%s) returned %+v, want %+v", i, o.remove, got, o.removed)
					}
				}
				if o.err == nil && err != nil || o.err != nil && !errors.Is(err, o.err) {
					t.Fatalf("op %d: %v, want %v", i, err, o.err)
				}
			}
			check(t, c, tc.want)
			mustClose(t, c)
			c = open(t, dir)
			defer mustClose(t, c)
			check(t, c, tc.want)
		})
	}

	t.Run("concurrent creates of one version: one wins", func(t *testing.T) {
		c := open(t, t.TempDir())
		defer mustClose(t, c)
		const n = 16
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { errs <- c.Create(t.Context(), image("2.0.0", fmt.Sprint("upload ", i))) })
		}
		wg.Wait()
		close(errs)
		won := 0
		for err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, firmware.ErrExists):
				t.Errorf("Create: %v, want nil or ErrExists", err)
			}
		}
		if won != 1 {
			t.Errorf("%d creates succeeded, want 1", won)
		}
	})

	for _, tc := range []struct {
		name   string
		closed bool  // the catalog is closed; otherwise the context is done
		want   error // what every call wraps
	}{
		{"a done context changes nothing", false, context.Canceled},
		{"closed", true, firmware.ErrClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := open(t, t.TempDir())
			if err := c.Create(t.Context(), a); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			if tc.closed {
				mustClose(t, c)
			} else {
				defer mustClose(t, c)
				cancel()
			}
			defer cancel()
			_, getErr := c.Get(ctx, a.Version)
			_, listErr := c.List(ctx)
			_, delErr := c.Delete(ctx, a.Version)
			for name, err := range map[string]error{
				"Get": getErr, "List": listErr, "Delete": delErr,
				"Create":  c.Create(ctx, b),
				"Replace": c.Replace(ctx, a2),
			} {
				if !errors.Is(err, tc.want) {
					t.Errorf("%s = %v, want %v", name, err, tc.want)
				}
			}
			if tc.closed {
				if err := c.Close(ctx); err != nil {
					t.Errorf("second Close = %v, want nil", err)
				}
			} else {
				check(t, c, []firmware.Image{a})
			}
		})
	}
}

// same compares two records; times are compared as instants.
func same(a, b firmware.Image) bool {
	return a.Created.Equal(b.Created) && reflect.DeepEqual(withoutTime(a), withoutTime(b))
}

func withoutTime(img firmware.Image) firmware.Image {
	img.Created = time.Time{}
	if len(img.Signature) == 0 {
		img.Signature = nil
	}
	return img
}

// check checks that c holds exactly want, through List and Get.
func check(t *testing.T, c firmware.Catalog, want []firmware.Image) {
	t.Helper()
	got, err := c.List(t.Context())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	byVersion := func(x, y firmware.Image) int { return strings.Compare(string(x.Version), string(y.Version)) }
	slices.SortFunc(got, byVersion)
	want = slices.SortedFunc(slices.Values(want), byVersion)
	if len(got) != len(want) || !slices.EqualFunc(got, want, same) {
		t.Errorf("List = %+v, want %+v", got, want)
	}
	for _, img := range want {
		if g, err := c.Get(t.Context(), img.Version); err != nil || !same(g, img) {
			t.Errorf("Get(%s) = %+v, %v; want %+v", img.Version, g, err, img)
		}
	}
	if _, err := c.Get(t.Context(), "0.0.0-never"); !errors.Is(err, firmware.ErrNotFound) {
		t.Errorf("Get of a missing version = %v, want ErrNotFound", err)
	}
}

func mustClose(t *testing.T, c Catalog) {
	t.Helper()
	if err := c.Close(context.Background()); err != nil {
		t.Errorf("Close: %v", err)
	}
}
