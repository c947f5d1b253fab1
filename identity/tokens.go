package identity

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// AdminTokenName is the name of the operator token EnsureAdminToken creates.
const AdminTokenName = "admin"

// Token describes a token. It never holds the secret.
type Token struct {
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	CreatedAt time.Time `json:"createdAt"`
}

// ParseName validates a token name: the same rules as a device ID (1 to
// 128 bytes of [A-Za-z0-9_.:-]), because a token name is also an MQTT
// user name. The error wraps ErrInvalidName.
func ParseName(s string) (string, error) {
	if _, err := device.ParseID(s); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidName, err)
	}
	return s, nil
}

// CreateToken creates a token for role (RoleOperator or RoleIntegrator)
// and returns its secret, which is not stored and cannot be shown again.
// The credential a client presents is the name and the secret: as MQTT
// user name and password, or as the HTTP bearer token "name:secret". It
// fails with ErrInvalidRole, ErrInvalidName, or ErrExists when name is
// already a token or a device.
func (s *Store) CreateToken(ctx context.Context, role Role, name string) (string, error) {
	return s.createToken(ctx, role, name, false)
}

// createToken creates (or, with replace, replaces) token name.
func (s *Store) createToken(ctx context.Context, role Role, name string, replace bool) (string, error) {
	if _, err := ParseRole(string(role)); err != nil {
		return "", fmt.Errorf("create token: %w", err)
	}
	if _, err := ParseName(name); err != nil {
		return "", fmt.Errorf("create token: %w", err)
	}
	secret := newSecret()
	rec := Record{
		Name:      name,
		Role:      role,
		MAC:       secretMAC(s.key, role, name, []byte(secret)),
		CreatedAt: s.cfg.Now().UTC(),
		SecretGen: newGeneration(),
	}
	var replaced *Record
	s.credMu.Lock()
	err := s.retry(ctx, func() error {
		replaced = nil
		if replace {
			old, err := s.st.Get(ctx, name)
			switch {
			case err == nil && old.IsDevice():
				return taken(name, RoleDevice)
			case err == nil:
				replaced = &old
				return s.st.Replace(ctx, old, rec)
			case !errors.Is(err, ErrNotFound):
				return err
			}
		}
		conflicts, err := s.st.Create(ctx, []Record{rec}, false)
		if err == nil && len(conflicts) > 0 {
			err = taken(name, conflicts[0].Taken)
		}
		if errors.Is(err, ErrExists) && replace {
			err = fmt.Errorf("token %s created meanwhile: %w", name, ErrConflict) // read it again
		}
		return err
	})
	if err == nil {
		s.setCurrent(name, rec.credential())
	}
	s.credMu.Unlock()
	if err != nil {
		return "", fmt.Errorf("create token %s: %w", name, err)
	}
	s.log.Info("token created", "token", name, "role", role)
	if replaced != nil {
		s.revoked(ctx, Principal{Role: replaced.Role, Name: name}, RevokeReplaced)
	}
	return secret, nil
}

// ListTokens returns every token in name order.
func (s *Store) ListTokens(ctx context.Context) ([]Token, error) {
	var list []Token
	err := s.scan(ctx, s.st.Tokens, func(r Record) {
		list = append(list, Token{Name: r.Name, Role: r.Role, CreatedAt: r.CreatedAt})
	})
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return list, nil
}

// RevokeToken deletes token name. Its sessions lose all rights at once
// (Allow refuses them, also after a token of the same name is created
// again), new connections and requests are refused, and Config.OnRevoke
// is told (umbra serve then disconnects the sessions). It fails with
// ErrNotFound for an unknown token.
func (s *Store) RevokeToken(ctx context.Context, name string) error {
	var rec Record
	s.credMu.Lock()
	err := s.check(ctx)
	if err == nil {
		rec, err = s.st.DeleteToken(ctx, name)
		err = closedErr(err)
	}
	if err == nil {
		s.setCurrent(name, nil)
	}
	s.credMu.Unlock()
	if err != nil {
		return fmt.Errorf("revoke token %s: %w", clip(name), err)
	}
	s.log.Info("token revoked", "token", name)
	s.revoked(ctx, Principal{Role: rec.Role, Name: name}, RevokeRevoked)
	return nil
}

// EnsureAdminToken makes sure path holds a valid operator credential
// "admin:<secret>". If path already holds a credential that verifies as an
// operator, it is kept and created is false. Otherwise (first start, file
// deleted, or token revoked) the operator token AdminTokenName is created,
// replacing any token of that name, and written to path with mode 0600
// (atomically: a temporary file renamed over path); created is true.
// Deleting the file and restarting therefore rotates the admin secret.
func (s *Store) EnsureAdminToken(ctx context.Context, path string) (created bool, err error) {
	return s.EnsureOperatorToken(ctx, path, AdminTokenName)
}

// EnsureOperatorToken is EnsureAdminToken for the operator token name. In
// cluster mode the nodes share one identity store, so each node's bootstrap
// token has a name of its own (a node starting without its file must not
// replace, and so revoke, another node's token).
func (s *Store) EnsureOperatorToken(ctx context.Context, path, name string) (created bool, err error) {
	if err := s.check(ctx); err != nil {
		return false, err
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		p, verr := s.VerifyBearer(ctx, strings.TrimSpace(string(data)))
		if verr == nil && p.Role == RoleOperator {
			return false, nil
		}
		if errors.Is(verr, ErrClosed) || ctx.Err() != nil {
			return false, verr // the file may well be valid
		}
		s.log.Warn("admin token file is not a valid operator credential; replacing it", "path", path, "error", verr)
	case !errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("identity: read admin token: %w", err)
	}
	secret, err := s.createToken(ctx, RoleOperator, name, true)
	if err != nil {
		return false, err
	}
	if err := writeFileAtomic(path, []byte(name+":"+secret+"\n"), 0o600); err != nil {
		return false, fmt.Errorf("identity: write admin token: %w", err)
	}
	return true, nil
}

// writeFileAtomic writes data to path with perm through a temporary file in
// the same directory that is synced and renamed over path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
