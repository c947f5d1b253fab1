package policy_test

import (
	"slices"
	"testing"

	"github.com/umbra-iot/umbra/policy"
)

// extraFuzzSubjects are odd subjects the tables do not have.
var extraFuzzSubjects = []policy.Subject{
	{Role: policy.RoleDevice, User: "+", ClientID: "#"},
	{Role: policy.RoleOperator, User: "u/x", ClientID: "$SYS"},
	{Role: "", User: "bob", ClientID: "bob-1"},
	{Role: policy.RoleIntegrator, User: "A", ClientID: "A"},
}

// FuzzAllowMatchesReference compares the compiled policy's Allow with a
// linear reading of the rules (ReferenceAllow) for a fuzzed policy file,
// topic and access, for every subject of the tables and a few odd ones.
// It is seeded with every table case and its policy source.
func FuzzAllowMatchesReference(f *testing.F) {
	subjects := slices.Clone(extraFuzzSubjects)
	for _, tb := range allowTables {
		for _, c := range tb.cases {
			f.Add(tb.src, c.topic, c.a == policy.Write)
			if !slices.Contains(subjects, c.s) {
				subjects = append(subjects, c.s)
			}
		}
	}
	f.Add("user bob\ntopic readwrite a/+/c\ntopic deny a/b/c\npattern write x/%c/#\n", "x/bob-1/y", true)
	f.Add("topic read anon/#\nrole integrator\ntopic deny $aws/#\npattern read %u/%c\n", "dash/dash-1", false)
	f.Add("pattern read #\npattern deny +/secret/#\ndefault replace\n", "a/secret", false)
	f.Fuzz(func(t *testing.T, src, topic string, write bool) {
		file, err := policy.Parse("fuzz.acl", []byte(src))
		if err != nil {
			return
		}
		p := policy.New(file)
		a := policy.Read
		if write {
			a = policy.Write
		}
		for _, s := range subjects {
			if got, want := p.Allow(s, topic, a), policy.ReferenceAllow(file, s, topic, a); got != want {
				t.Errorf("policy %q: Allow(%+v, %q, %s) = %t, reference says %t", src, s, topic, a, got, want)
			}
		}
	})
}
