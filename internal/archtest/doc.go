// Package archtest holds no code: its tests check the module's package
// layout against the plan in docs/architecture.md, so that the plan
// cannot erode silently. They run `go list` on the module and parse its
// sources:
//
//   - only the bbolt adapters (packages named boltstore) import bbolt;
//   - package client depends on neither the server nor mochi, bbolt or
//     paho (go list -deps);
//   - context.WithValue appears only in the HTTP API's request-scoped
//     middleware, never for wiring;
//   - the domain packages import only what the plan allows.
package archtest
