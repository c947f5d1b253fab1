// Package errtext puts Go error texts in a user's terms. An error wrapped
// through Umbra's layers reads "create: rollout: invalid request: firmware
// 9.9.9: get 9.9.9: firmware: version not found"; Strip drops the segments
// that only name an internal package or an internal step, leaving "invalid
// request: firmware 9.9.9: version not found". The HTTP API's error
// messages and the CLI's use it.
package errtext
