package policy

// ReferenceAllow is the slow, direct reading of Allow's documentation
// (refAllow) for the policy New(f) compiles, for the black-box fuzzer.
func ReferenceAllow(f *File, s Subject, topic string, a Access) bool {
	return refAllow(tiersOf(f), s, topic, a)
}
