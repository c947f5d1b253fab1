package server

import (
	"errors"
	"fmt"

	"github.com/umbra-iot/umbra/policy"
)

// ErrNoACLFile is returned by ReloadACL when Config.ACLFile is empty.
var ErrNoACLFile = errors.New("server: no ACL file to reload")

// Results of an ACL reload in umbra_acl_reloads_total{result}.
const (
	reloadOK    = "ok"
	reloadError = "error"
)

// loadACL reads Config.ACLFile: the built-in default policy alone when it
// is empty.
func (s *Server) loadACL() (*policy.Policy, error) {
	if s.cfg.ACLFile == "" {
		return policy.Default(), nil
	}
	p, err := policy.Load(s.cfg.ACLFile)
	if err != nil {
		return nil, fmt.Errorf("load ACL policy: %w", err)
	}
	return p, nil
}

// ReloadACL reads Config.ACLFile again and, if it is valid, makes it the
// policy of every check from now on, existing sessions and subscriptions
// included (a subscription the new policy forbids stays, but receives
// nothing: every delivery is checked). A bad file keeps the policy in
// force. Either way it logs one line and counts the reload in
// umbra_acl_reloads_total{result="ok"|"error"}. umbra serve calls it on
// SIGHUP. It fails with ErrNoACLFile without Config.ACLFile (logged, not
// counted), and otherwise with the file's error: syntax errors name each
// bad line as "<file>:<line>: <what is wrong>".
func (s *Server) ReloadACL() error {
	if s.cfg.ACLFile == "" {
		s.log.Warn("ACL reload requested, but no ACL file is configured (--acl-file): keeping the built-in default policy")
		return ErrNoACLFile
	}
	p, err := s.loadACL()
	if err != nil {
		s.metrics.AddACLReloads(reloadError, 1)
		s.log.Error("ACL reload failed: keeping the policy in force", "file", s.cfg.ACLFile,
			"policy", s.ids.Policy().String(), "err", err)
		return err
	}
	s.ids.SetPolicy(p)
	s.metrics.AddACLReloads(reloadOK, 1)
	s.log.Info("ACL policy reloaded", "file", s.cfg.ACLFile, "policy", p.String())
	return nil
}
