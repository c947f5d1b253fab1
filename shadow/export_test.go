package shadow

// MatchFilter exposes matchFilter to the black-box tests.
var MatchFilter = matchFilter
