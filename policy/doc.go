// Package policy is Umbra's topic ACL: it parses policy files in
// mosquitto's acl_file syntax, extended with role sections, compiles them
// together with the built-in default policy, and answers Allow(subject,
// topic, access) for every PUBLISH, SUBSCRIBE and delivered message. It
// uses the standard library only and knows nothing of the broker or of
// credentials; identity maps an authenticated session to a
// Subject. docs/acl.md is the user's guide; this comment is the precise
// model.
//
// # Syntax
//
// One directive per line; blank lines and lines whose first non-blank
// character is "#" are ignored. Tokens are separated by spaces or tabs.
//
//	topic [read|write|readwrite|deny] <filter>    a rule for the current section
//	pattern [read|write|readwrite|deny] <filter>  a rule with %c and %u substituted
//	user <name>                                   start the section of one user
//	role device|operator|integrator               start the section of a role (Umbra)
//	default extend|replace                        combine with the built-in default (Umbra)
//
// Without an access word a rule grants readwrite. The filter is the rest
// of the line and may hold spaces; it is an MQTT filter ("+" and "#" whole
// levels, "#" last) and may not be a shared subscription. In pattern lines
// a level that is exactly %c is replaced by the client ID and %u by the
// user name; a client ID or user name holding "+", "#" or "/" (and an
// empty one) matches no %c or %u level.
//
// # Sections
//
//   - topic lines before the first user or role line apply to anonymous
//     clients only (Subject.User ""), as in mosquitto;
//   - topic lines after "user <name>" apply to the subject whose User is
//     <name> (a device ID or a token name);
//   - topic and pattern lines after "role <name>" apply to every subject of
//     that role (the section ends at the next user or role line);
//   - pattern lines anywhere else apply to every subject, as in mosquitto.
//
// Sections of the same user or role may be split over the file.
//
// # Evaluation
//
// Allow first refuses Write on a reserved topic (reserved.acl, see
// Reserved): topics only Umbra's in-process publishers use, such as
// shadow replies, presence and the rollout feed. Then it consults the
// policy file, then the built-in default (default.acl, see
// DefaultSource) unless the file says "default replace". In each, the
// rules that apply to the subject and cover the topic decide: any deny
// line refuses, else any line granting the access allows; if no such rule
// exists the next file decides, and after the last the answer is no. So
// a file can add to the default (a grant), take from it (a deny), and
// override it where it refuses (a grant in the file is consulted first).
//
// A rule covers a topic when it matches it; it covers a subscription
// filter when it matches every topic the filter matches (a grant of
// devices/%u/# covers devices/dev-1/+, not devices/+/telemetry). A
// SUBSCRIBE is granted when a grant covers its filter and no deny does;
// a deny covering only part of the filter lets the subscription through
// and refuses the messages it covers at delivery, which the broker checks
// with Read on every message's topic. As in MQTT, "+", "#", %c and %u in
// the first level do not match a topic starting with "$": $SYS/… and
// $aws/… need rules naming them.
//
// # Where Umbra differs from mosquitto 2.0
//
//   - role sections and the default directive are Umbra's; mosquitto
//     refuses both keywords, so no mosquitto file holds them by accident;
//   - deny wins over every grant of the same file: mosquitto checks a
//     user's section before the patterns, so there a user's grant beats a
//     pattern's deny;
//   - mosquitto grants every SUBSCRIBE and filters at delivery only; Umbra
//     refuses a filter that no grant covers (SUBACK failure code);
//   - tabs separate tokens, and an indented "#" line is a comment
//     (mosquitto refuses both lines);
//   - "topic read" without a filter is an error (mosquitto reads a topic
//     named "read"), %c or %u in a topic line or inside a level is an
//     error (mosquitto matches it literally), and so is a $share filter;
//   - a client ID or user name holding "+" or "#" only fails the rules
//     that substitute it (mosquitto refuses it every pattern);
//   - "user" names the authenticated name, which is the MQTT user name of
//     a password login and the certificate's device for a certificate
//     login.
//
// # Concurrency, cost and errors
//
// A Policy is immutable and safe for concurrent use; replace it as a
// whole to reload. Allow walks a trie per applicable section, once per
// level of the topic, and does not allocate: 30 to 50 ns for the default
// policy on the project's loaded 2-core test machine (BenchmarkAllow), a
// file adding a second walk where it decides nothing. Parse reports every bad line
// (up to 20) as a *ParseError reading "<file>:<line>: <what is wrong>",
// which unwraps to ErrSyntax; a file over MaxFileSize fails with
// ErrTooLarge.
package policy
