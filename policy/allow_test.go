package policy_test

import (
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/policy"
)

const (
	r = policy.Read
	w = policy.Write
)

var (
	devA  = policy.Subject{Role: policy.RoleDevice, User: "A", ClientID: "A"}
	devB  = policy.Subject{Role: policy.RoleDevice, User: "B", ClientID: "B"}
	op    = policy.Subject{Role: policy.RoleOperator, User: "ops", ClientID: "console-1"}
	integ = policy.Subject{Role: policy.RoleIntegrator, User: "dash", ClientID: "dash-1"}
	anon  = policy.Subject{Role: policy.RoleOperator, ClientID: "anything"}
)

type allowCase struct {
	name  string
	s     policy.Subject
	topic string
	a     policy.Access
	want  bool
}

func checkAllow(t *testing.T, p *policy.Policy, tests []allowCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.Allow(tc.s, tc.topic, tc.a); got != tc.want {
				t.Errorf("%s: Allow(%+v, %q, %s) = %t, want %t", p, tc.s, clipTopic(tc.topic), tc.a, got, tc.want)
			}
		})
	}
}

func clipTopic(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// mustParse compiles src (named t.acl).
func mustParse(t *testing.T, src string) *policy.Policy {
	t.Helper()
	f, err := policy.Parse("t.acl", []byte(src))
	if err != nil {
		t.Fatalf("Parse(%q): %v", src, err)
	}
	return policy.New(f)
}

// TestDefaultPolicy is the built-in default, table by table as in
// docs/acl.md.
func TestDefaultPolicy(t *testing.T) { checkAllow(t, policy.Default(), defaultCases) }

// defaultCases are the built-in default's, table by table as in
// docs/acl.md.
var defaultCases = []allowCase{
	// A device: its shadow requests, classic and named, on both trees.
	{"device publishes own update", devA, "state/A/update", w, true},
	{"device publishes own get", devA, "state/A/get", w, true},
	{"device publishes own delete", devA, "state/A/delete", w, true},
	{"device publishes own named update", devA, "state/A/shadow/cfg/update", w, true},
	{"device publishes own aws update", devA, "$aws/things/A/shadow/update", w, true},
	{"device publishes own aws named get", devA, "$aws/things/A/shadow/name/cfg/get", w, true},
	{"device publishes own aws unknown op (Umbra answers 404)", devA, "$aws/things/A/shadow/list", w, true},
	{"device publishes own jobs start-next", devA, "$aws/things/A/jobs/start-next", w, true},
	{"device publishes own jobs get", devA, "$aws/things/A/jobs/get", w, true},
	{"device publishes own jobs $next/get", devA, "$aws/things/A/jobs/$next/get", w, true},
	{"device publishes own job update", devA, "$aws/things/A/jobs/r1/update", w, true},
	{"device publishes own jobs unknown op (Umbra answers InvalidTopic)", devA, "$aws/things/A/jobs/r1/cancel", w, true},
	{"device publishes below its own jobs ops", devA, "$aws/things/A/jobs/r1/update/x", w, false},
	{"device publishes own jobs notify", devA, "$aws/things/A/jobs/notify", w, false},
	{"device publishes own jobs get accepted", devA, "$aws/things/A/jobs/get/accepted", w, false},
	{"device publishes own start-next rejected", devA, "$aws/things/A/jobs/start-next/rejected", w, false},
	{"device publishes B's jobs request", devA, "$aws/things/B/jobs/start-next", w, false},
	{"device publishes B's job update", devA, "$aws/things/B/jobs/r1/update", w, false},
	{"device publishes below its own aws ops", devA, "$aws/things/A/shadow/update/x", w, false},
	{"device publishes B's update", devA, "state/B/update", w, false},
	{"device publishes B's aws update", devA, "$aws/things/B/shadow/update", w, false},
	{"device publishes with prefix ID", devA, "state/AB/update", w, false},
	{"device publishes other state topic", devA, "state/A/foo", w, false},
	{"device publishes wildcard", devA, "state/A/+", w, false},
	// … never the replies, presence or the rollout feed.
	{"device publishes own accepted", devA, "state/A/update/accepted", w, false},
	{"device publishes own rejected", devA, "state/A/get/rejected", w, false},
	{"device publishes own delta", devA, "state/A/update/delta", w, false},
	{"device publishes own documents", devA, "state/A/update/documents", w, false},
	{"device publishes own named delta", devA, "state/A/shadow/cfg/update/delta", w, false},
	{"device publishes own aws accepted", devA, "$aws/things/A/shadow/update/accepted", w, false},
	{"device publishes own aws named documents", devA, "$aws/things/A/shadow/name/cfg/update/documents", w, false},
	{"device publishes own jobs notify", devA, "$aws/things/A/jobs/notify-next", w, false},
	{"device publishes own job reply", devA, "$aws/things/A/jobs/j1/update/accepted", w, false},
	{"device publishes own presence", devA, "state/A/presence", w, false},
	{"device publishes rollout status", devA, "rollouts/r1/status", w, false},
	{"device publishes $SYS", devA, "$SYS/broker/x", w, false},
	// A device reads below its own trees only.
	{"device subscribes own state subtree", devA, "state/A/#", r, true},
	{"device subscribes own delta", devA, "state/A/update/delta", r, true},
	{"device subscribes own get replies", devA, "state/A/get/+", r, true},
	{"device subscribes own aws shadows", devA, "$aws/things/A/shadow/#", r, true},
	{"device subscribes own aws thing", devA, "$aws/things/A/#", r, false},
	{"device subscribes own aws get replies", devA, "$aws/things/A/shadow/get/+", r, true},
	{"device subscribes own notify-next", devA, "$aws/things/A/jobs/notify-next", r, true},
	{"device subscribes own jobs/#", devA, "$aws/things/A/jobs/#", r, true},
	{"device subscribes own job get/+ (v2 SDK)", devA, "$aws/things/A/jobs/r1/get/+", r, true},
	{"device subscribes B's notify-next", devA, "$aws/things/B/jobs/notify-next", r, false},
	{"device subscribes all things' notify-next", devA, "$aws/things/+/jobs/notify-next", r, false},
	{"device subscribes B's subtree", devA, "state/B/#", r, false},
	{"device subscribes all deltas", devA, "state/+/update/delta", r, false},
	{"device subscribes state/#", devA, "state/#", r, false},
	{"device subscribes #", devA, "#", r, false},
	{"device subscribes B's aws tree", devA, "$aws/things/B/shadow/#", r, false},
	{"device subscribes rollouts", devA, "rollouts/#", r, false},
	{"device subscribes $SYS", devA, "$SYS/#", r, false},
	{"device receives B's delta", devA, "state/B/update/delta", r, false},
	// A device's own tree: telemetry, events, logs out; commands in.
	{"device publishes telemetry", devA, "devices/A/telemetry", w, true},
	{"device publishes telemetry below", devA, "devices/A/telemetry/temp", w, true},
	{"device publishes events", devA, "devices/A/events/boot", w, true},
	{"device publishes logs", devA, "devices/A/logs", w, true},
	{"device publishes a command", devA, "devices/A/commands/reboot", w, false},
	{"device publishes elsewhere in its tree", devA, "devices/A/status", w, false},
	{"device publishes B's telemetry", devA, "devices/B/telemetry", w, false},
	{"device subscribes own commands", devA, "devices/A/commands/#", r, true},
	{"device subscribes own tree", devA, "devices/A/#", r, true},
	{"device subscribes all telemetry", devA, "devices/+/telemetry", r, false},
	{"device receives B's telemetry", devA, "devices/B/telemetry", r, false},
	{"device subscribes B's commands", devA, "devices/B/commands/#", r, false},
	{"device shared subscription of own tree", devA, "$share/g/devices/A/#", r, true},
	{"device shared subscription of B's tree", devA, "$share/g/devices/B/#", r, false},
	{"device subscribes own firmware", devA, "firmware/A/#", r, true},
	{"device subscribes B's firmware", devA, "firmware/B/#", r, false},
	{"device without a user", policy.Subject{Role: policy.RoleDevice, ClientID: "A"}, "state/A/update", w, false},
	{"device with a wildcard user", policy.Subject{Role: policy.RoleDevice, User: "+", ClientID: "A"}, "state/+/#", r, false},
	// An operator: everything but the reserved topics.
	{"operator publishes any update", op, "state/B/update", w, true},
	{"operator publishes a command", op, "devices/A/commands/reboot", w, true},
	{"operator publishes any topic", op, "TopicA/B", w, true},
	{"operator publishes aws request", op, "$aws/things/A/shadow/update", w, true},
	{"operator publishes accepted", op, "state/B/update/accepted", w, false},
	{"operator publishes presence", op, "state/B/presence", w, false},
	{"operator publishes rollout status", op, "rollouts/r1/status", w, false},
	{"operator publishes $SYS", op, "$SYS/broker/uptime", w, false},
	{"operator publishes other $ topic", op, "$foo/x", w, false},
	{"operator subscribes #", op, "#", r, true},
	{"operator subscribes $SYS", op, "$SYS/#", r, true},
	{"operator subscribes aws", op, "$aws/things/+/shadow/#", r, true},
	{"operator subscribes rollouts", op, "rollouts/#", r, true},
	{"operator shared subscription", op, "$share/workers/devices/+/telemetry", r, true},
	{"operator malformed filter", op, "state/+x", r, false},
	{"operator publishes wildcard", op, "state/+/update", w, false},
	// An integrator reads everything but $SYS, writes nothing.
	{"integrator subscribes #", integ, "#", r, true},
	{"integrator subscribes all telemetry", integ, "devices/+/telemetry", r, true},
	{"integrator receives telemetry", integ, "devices/A/telemetry", r, true},
	{"integrator subscribes rejected", integ, "state/+/update/rejected", r, true},
	{"integrator subscribes aws", integ, "$aws/things/+/shadow/update/accepted", r, true},
	{"integrator subscribes $SYS", integ, "$SYS/#", r, false},
	{"integrator publishes update", integ, "state/A/update", w, false},
	{"integrator publishes a command", integ, "devices/A/commands/x", w, false},
	{"integrator publishes anything", integ, "TopicA", w, false},
	// Anonymous clients are operators.
	{"anonymous publishes anything", anon, "TopicA", w, true},
	{"anonymous publishes accepted", anon, "state/A/update/accepted", w, false},
	// Edge cases.
	{"unknown role", policy.Subject{Role: "root", User: "x"}, "#", r, false},
	{"empty topic", op, "", r, false},
	{"over-long topic", op, "a/" + strings.Repeat("x", 70000), r, false},
	{"NUL in topic (the broker refuses it first)", devA, "devices/A/\x00", r, true},
	{"no access", op, "a", 0, false},
	{"both accesses at once", op, "a", r | w, false},
	{"malformed shared subscription", op, "$share/g", r, false},
	{"shared subscription with a wildcard group", op, "$share/+/a", r, false},
	{"publish to a shared subscription", op, "$share/g/a", w, false},
}

// TestMosquittoSemantics pins the acl_file semantics Umbra keeps from
// mosquitto 2.0 and where it differs (see the package documentation). The
// files replace the default so that only their rules count.
func TestMosquittoSemantics(t *testing.T) { checkAllow(t, mustParse(t, mosquittoSrc), mosquittoCases) }

var (
	bob    = policy.Subject{Role: policy.RoleOperator, User: "bob", ClientID: "bob-1"}
	eve    = policy.Subject{Role: policy.RoleOperator, User: "eve", ClientID: "eve-1"}
	nobody = policy.Subject{Role: policy.RoleOperator, ClientID: "c1"}
)

const mosquittoSrc = `default replace
# Before the first user line: anonymous clients only.
topic readwrite anon/#
topic read public
topic public/rw
user bob
topic readwrite shared/#
topic deny shared/secret
topic read bob/in
topic write bob/out
topic readwrite with spaces/x y
pattern deny shared/%u/x
pattern readwrite own/%c/#
pattern read pat/%u
pattern write every/one
user eve
topic read $SYS/broker/#
topic readwrite +/eve
`

var mosquittoCases = []allowCase{
	{"anonymous section: anonymous client", nobody, "anon/a", w, true},
	{"anonymous section: not for users", bob, "anon/a", r, false},
	{"topic line without access is readwrite", nobody, "public/rw", w, true},
	{"topic read refuses write", nobody, "public", w, false},
	{"topic read grants read", nobody, "public", r, true},
	{"user section: its user", bob, "shared/a", w, true},
	{"user section: not another user", eve, "shared/a", r, false},
	{"user section: read only", bob, "bob/in", w, false},
	{"user section: read", bob, "bob/in", r, true},
	{"user section: write only", bob, "bob/out", r, false},
	{"spaces in filter", bob, "with spaces/x y", w, true},
	{"deny in the user section", bob, "shared/secret", r, false},
	{"deny whatever order", bob, "shared/secret", w, false},
	// Umbra: deny wins over a user's grant (mosquitto: the grant).
	{"pattern deny beats user grant", bob, "shared/bob/x", w, false},
	{"pattern deny only for its user", eve, "shared/bob/x", r, false},
	{"pattern after user line: every client", eve, "own/eve-1/z", w, true},
	{"pattern for anonymous client", nobody, "own/c1", r, true},
	{"pattern %c is the client ID, not the user", eve, "own/eve/z", r, false},
	{"pattern %u", eve, "pat/eve", r, true},
	{"pattern %u without user name", nobody, "pat/", r, false},
	{"pattern without substitution", nobody, "every/one", w, true},
	{"client ID with a wildcard", policy.Subject{User: "eve", ClientID: "+"}, "own/+/#", r, false},
	{"client ID with a separator", policy.Subject{User: "eve", ClientID: "a/b"}, "own/a/b", r, false},
	{"$ topics need $ rules", eve, "$SYS/broker/uptime", r, true},
	{"+ does not match $", eve, "$SYS/eve", r, false},
	{"+ at first level", eve, "x/eve", w, true},
	// Subscriptions: a grant must cover the filter.
	{"filter covered", bob, "shared/+/y", r, true},
	{"filter covered by a partial deny: granted", bob, "shared/#", r, true},
	{"filter covered by a deny: refused", bob, "shared/secret", r, false},
	{"filter covered by the grant of a pattern", eve, "own/eve-1/#", r, true},
	{"filter not covered", eve, "own/+/#", r, false},
	{"filter wider than the grant", bob, "#", r, false},
	{"shared subscription checked as its filter", bob, "$share/g/shared/a", r, true},
}

// TestRoleSections: role sections scope topic and pattern lines to their
// role; a user line ends them.
func TestRoleSections(t *testing.T) { checkAllow(t, mustParse(t, rolesSrc), rolesCases) }

const rolesSrc = `default replace
role device
topic read news/#
pattern readwrite devices/%u/#
pattern deny devices/%u/private
role integrator
topic read devices/+/telemetry
user A
topic write a-only
pattern read everyone/%c
role device
topic read more-news
`

var rolesCases = []allowCase{
	{"role topic line", devA, "news/x", r, true},
	{"role topic line: other role", integ, "news/x", r, false},
	{"role pattern line", devA, "devices/A/x", w, true},
	{"role pattern line: other role", op, "devices/ops/x", w, false},
	{"role deny", devA, "devices/A/private", r, false},
	{"role deny partial on filter", devA, "devices/A/#", r, true},
	{"role deny covering filter", devA, "devices/A/private", r, false},
	{"second role section", integ, "devices/A/telemetry", r, true},
	{"user after role", devA, "a-only", w, true},
	{"user after role: not other device", devB, "a-only", w, false},
	{"pattern in a user section is global", op, "everyone/console-1", r, true},
	{"role section split over the file", devB, "more-news", r, true},
	{"unknown role gets global patterns", policy.Subject{Role: "x", ClientID: "c"}, "everyone/c", r, true},
	{"unknown role gets no role section", policy.Subject{Role: "x", User: "A", ClientID: "A"}, "devices/A/x", r, false},
}

// TestExtendReplace: a file is consulted before the default; its deny
// takes away, its grant adds or overrides, and "default replace" drops
// the default.
func TestExtendReplace(t *testing.T) {
	extend := mustParse(t, extendSrc)
	if got, want := extend.String(), "t.acl + <built-in default>"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	checkAllow(t, extend, extendCases)
	replace := mustParse(t, replaceSrc)
	if got, want := replace.String(), "t.acl"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	checkAllow(t, replace, replaceCases)
	explicit := mustParse(t, "default extend\n")
	checkAllow(t, explicit, []allowCase{{"explicit extend keeps the default", op, "a", r, true}})
	if got := policy.New(nil); got != policy.Default() {
		t.Errorf("New(nil) = %v, want Default()", got)
	}
}

const extendSrc = `# extends the default
role device
pattern write devices/%u/status
pattern deny devices/%u/logs/#
role integrator
topic write devices/+/commands/#
user ops
topic deny secret/#
`

var extendCases = []allowCase{
	{"file grant adds", devA, "devices/A/status", w, true},
	{"file deny takes away", devA, "devices/A/logs", w, false},
	{"file deny takes read away too", devA, "devices/A/logs/x", r, false},
	{"default still applies", devA, "devices/A/telemetry", w, true},
	{"default still protects other devices", devA, "devices/B/status", w, false},
	{"file grant overrides a default refusal", integ, "devices/A/commands/x", w, true},
	{"reserved topics stay reserved", integ, "rollouts/r1/status", w, false},
	{"user deny", op, "secret/x", r, false},
	{"user deny: other topics from the default", op, "other", w, true},
	{"filter partially denied by the file, granted by the default", devA, "devices/A/#", r, true},
}

const replaceSrc = "default replace\nrole device\npattern write devices/%u/status\n"

var replaceCases = []allowCase{
	{"file grant", devA, "devices/A/status", w, true},
	{"no default", devA, "devices/A/telemetry", w, false},
	{"no default for operators", op, "a", r, false},
}

// allowTables are every table of allowCases with the policy source it is
// checked against ("" for the built-in default alone); the fuzzers are
// seeded with them.
var allowTables = []struct {
	src   string
	cases []allowCase
}{
	{"", defaultCases}, {"", carriedCases}, {mosquittoSrc, mosquittoCases}, {rolesSrc, rolesCases},
	{extendSrc, extendCases}, {replaceSrc, replaceCases},
}

// TestReservedTopics: no policy lets a client publish on a reserved topic;
// reading them is up to the policy.
func TestReservedTopics(t *testing.T) {
	all := mustParse(t, "default replace\npattern readwrite #\npattern readwrite $aws/#\npattern readwrite $SYS/#\n")
	for _, f := range policy.Reserved() {
		topic := strings.NewReplacer("+", "x", "#", "y").Replace(f)
		t.Run(f, func(t *testing.T) {
			for _, p := range []*policy.Policy{policy.Default(), all} {
				if p.Allow(op, topic, w) {
					t.Errorf("%s: operator may publish on reserved %q", p, topic)
				}
			}
			if !all.Allow(op, topic, r) {
				t.Errorf("%s: operator may not read %q", all, topic)
			}
		})
	}
	if n := len(policy.Reserved()); n < 10 {
		t.Errorf("Reserved() has %d filters; the embedded list did not load", n)
	}
}
