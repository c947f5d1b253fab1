package identity_test

import (
	"errors"
	"maps"
	"testing"

	"github.com/umbra-iot/umbra/identity"
)

func TestParseSelector(t *testing.T) {
	cases := []struct {
		in   string
		want map[string]string
	}{
		{"hw=m2", map[string]string{"hw": "m2"}},
		{" hw=m2 , region=eu ,", map[string]string{"hw": "m2", "region": "eu"}},
		{"hw=", map[string]string{"hw": ""}},
	}
	for _, c := range cases {
		got, err := identity.ParseSelector(c.in)
		if err != nil || !maps.Equal(got, c.want) {
			t.Errorf("ParseSelector(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", " , ", "hw", "=m2", "hw=a,hw=b", "h w=x"} {
		if _, err := identity.ParseSelector(bad); !errors.Is(err, identity.ErrInvalidLabel) {
			t.Errorf("ParseSelector(%q) = %v, want ErrInvalidLabel", bad, err)
		}
	}
}
