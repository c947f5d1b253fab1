package identity

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/umbra-iot/umbra/device"
)

// MaxEnrollments is the most devices one EnrollDevices call (one bulk
// import) may enroll: the import is one transaction, and its request one
// HTTP body.
const MaxEnrollments = 10000

// Enrollment is one device to enroll.
type Enrollment struct {
	// ID is the device ID.
	ID device.ID
	// Labels are the device's labels (see ValidateLabels).
	Labels map[string]string
	// CertSHA256, if set, binds an existing client certificate to the
	// device: the lowercase hex SHA-256 of the certificate's DER
	// encoding (CertFingerprint; the certificate ID AWS IoT shows). Such
	// a certificate, of any subject and issuer, then logs in as this
	// device once the TLS listener has verified its chain, and the device
	// gets no secret.
	CertSHA256 string
}

// CertFingerprint returns the SHA-256 fingerprint of cert's DER encoding
// in lowercase hex: the form Enrollment.CertSHA256 takes.
func CertFingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// ParseCertPEM parses data as exactly one PEM "CERTIFICATE" block (text
// around it is allowed) and returns the certificate. A private key, a
// second certificate or anything unparsable is refused with an error
// wrapping ErrInvalidCert, so that a key is never sent for binding and a
// bundle is never bound by its first member by accident.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	var cert *x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == "CERTIFICATE" && cert != nil:
			return nil, fmt.Errorf("%w: more than one certificate; give the device's certificate alone", ErrInvalidCert)
		case b.Type == "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrInvalidCert, err)
			}
			cert = c
		case strings.Contains(b.Type, "PRIVATE KEY"):
			return nil, fmt.Errorf("%w: holds a private key (%s); give the certificate alone, the key stays on the device", ErrInvalidCert, b.Type)
		default:
			return nil, fmt.Errorf("%w: unexpected PEM block %q", ErrInvalidCert, clip(b.Type))
		}
	}
	if cert == nil {
		return nil, fmt.Errorf("%w: no PEM certificate", ErrInvalidCert)
	}
	if cert.IsCA {
		return nil, fmt.Errorf("%w: %q is a CA certificate, not a device's", ErrInvalidCert, clip(cert.Subject.CommonName))
	}
	return cert, nil
}

// validFingerprint checks the form of an Enrollment.CertSHA256.
func validFingerprint(fp string) error {
	if len(fp) != 2*sha256.Size || strings.ToLower(fp) != fp {
		return fmt.Errorf("%w: certificate SHA-256 %q: want %d lowercase hex digits", ErrInvalidCert, clip(fp), 2*sha256.Size)
	}
	if _, err := hex.DecodeString(fp); err != nil {
		return fmt.Errorf("%w: certificate SHA-256 %q: want %d lowercase hex digits", ErrInvalidCert, clip(fp), 2*sha256.Size)
	}
	return nil
}

// EnrollError is returned by EnrollDevices when one or more enrollments
// are bad; nothing was enrolled. Unwrap gives every problem's error, so
// errors.Is matches each one's sentinel.
type EnrollError struct {
	// Problems lists the bad enrollments in list order.
	Problems []EnrollProblem
}

// EnrollProblem is one bad enrollment.
type EnrollProblem struct {
	// Index is the enrollment's position in the list, from 0.
	Index int
	// ID is the enrollment's device ID as given.
	ID device.ID
	// Err says what is wrong; it wraps ErrInvalidName, ErrInvalidLabel,
	// ErrInvalidCert or ErrExists.
	Err error
}

func (e *EnrollError) Error() string {
	if len(e.Problems) == 1 {
		return fmt.Sprintf("enroll: device %d (%q): %v; nothing enrolled", e.Problems[0].Index, clip(string(e.Problems[0].ID)), e.Problems[0].Err)
	}
	return fmt.Sprintf("enroll: %d bad devices, the first %d (%q): %v; nothing enrolled",
		len(e.Problems), e.Problems[0].Index, clip(string(e.Problems[0].ID)), e.Problems[0].Err)
}

// Unwrap returns the problems' errors.
func (e *EnrollError) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p.Err
	}
	return errs
}

// EnrollDevices enrolls every device of list in one transaction, or, when
// any of them is bad, none: it then fails with an *EnrollError listing
// every bad one (an invalid ID, label or fingerprint; an ID that is taken,
// also twice in list; a certificate already bound, also twice in list).
// With dryRun it checks the same and changes nothing. It returns one
// secret per device, in list order: "" for a device bound to a
// certificate (it logs in with the certificate) and in a dry run. Each
// device's sessions, certificates and URLs follow the rules of AddDevice.
// More than MaxEnrollments devices fail with ErrInvalidName, and
// ErrClosed after Close.
func (s *Store) EnrollDevices(ctx context.Context, list []Enrollment, dryRun bool) ([]string, error) {
	secrets, err := s.enrollDevices(ctx, list, dryRun)
	if err == nil && !dryRun && s.cfg.OnEnrolled != nil {
		enrolled := make([]Enrollment, len(list))
		for i, e := range list {
			enrolled[i] = Enrollment{ID: e.ID, Labels: cloneLabels(e.Labels), CertSHA256: e.CertSHA256}
		}
		s.cfg.OnEnrolled(ctx, enrolled)
	}
	return secrets, err
}

// enrollDevices is EnrollDevices without Config.OnEnrolled, under the
// store's credentials lock.
func (s *Store) enrollDevices(ctx context.Context, list []Enrollment, dryRun bool) ([]string, error) {
	if len(list) > MaxEnrollments {
		return nil, fmt.Errorf("enroll: %w: %d devices, at most %d in one import", ErrInvalidName, len(list), MaxEnrollments)
	}
	var problems []EnrollProblem
	bad := func(i int, err error) { problems = append(problems, EnrollProblem{Index: i, ID: list[i].ID, Err: err}) }
	for i, e := range list {
		if _, err := device.ParseID(string(e.ID)); err != nil {
			bad(i, fmt.Errorf("%w: %w", ErrInvalidName, err))
		} else if err := ValidateLabels(e.Labels); err != nil {
			bad(i, err)
		} else if e.CertSHA256 != "" {
			if err := validFingerprint(e.CertSHA256); err != nil {
				bad(i, err)
			}
		}
	}
	// Every problem is listed, in list order: a device named twice, or a
	// certificate bound twice, in the list is a problem of its later
	// entries, and the storage reports names taken and certificates
	// bound. The storage is asked about each name once and each
	// certificate once; a list that names either twice has a problem, so
	// the storage is then asked only to check.
	secrets := make([]string, len(list))
	recs := make([]Record, 0, len(list))
	index := make([]int, 0, len(list)) // recs[j] is about list[index[j]]
	ids := make(map[device.ID]bool, len(list))
	fps := make(map[string]bool)
	write := len(problems) == 0 && !dryRun
	for i, e := range list {
		if ids[e.ID] {
			write = false
			continue
		}
		ids[e.ID] = true
		r := Record{Name: string(e.ID), Role: RoleDevice}
		if e.CertSHA256 != "" && fps[e.CertSHA256] {
			write = false
		} else if e.CertSHA256 != "" {
			fps[e.CertSHA256] = true
			r.CertSHA256 = e.CertSHA256
		}
		recs = append(recs, r)
		index = append(index, i)
	}
	if write { // recs is list, record for record
		now := s.cfg.Now().UTC()
		for i, e := range list {
			secret := newSecret()
			if e.CertSHA256 == "" {
				secrets[i] = secret
			} // else: the secret is never shown, so no password login works until a rotation
			recs[i].MAC = secretMAC(s.key, RoleDevice, string(e.ID), []byte(secret))
			recs[i].Labels = cloneLabels(e.Labels)
			recs[i].CreatedAt = now
			recs[i].Enrolment = newGeneration()
			recs[i].SecretGen = newGeneration()
		}
	}
	s.credMu.Lock()
	defer s.credMu.Unlock()
	if err := s.check(ctx); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	conflicts, err := s.st.Create(ctx, recs, !write)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", closedErr(err))
	}
	nameTaken := make(map[int]Role)       // by list index
	boundTo := make(map[string]device.ID) // by fingerprint
	for _, c := range conflicts {
		if c.Index < 0 || c.Index >= len(recs) {
			return nil, fmt.Errorf("enroll: storage reported a conflict of record %d of %d", c.Index, len(recs))
		}
		if c.Taken != "" {
			nameTaken[index[c.Index]] = c.Taken
		}
		if c.BoundTo != "" {
			boundTo[recs[c.Index].CertSHA256] = c.BoundTo
		}
	}
	clear(ids)
	registered := make(map[string]device.ID)
	for i, e := range list {
		if ids[e.ID] {
			bad(i, fmt.Errorf("%w: %q comes twice in this import", ErrExists, clip(string(e.ID))))
			continue
		}
		ids[e.ID] = true
		if by, ok := nameTaken[i]; ok {
			bad(i, taken(string(e.ID), by))
			continue
		}
		if e.CertSHA256 == "" {
			continue
		}
		if first, dup := registered[e.CertSHA256]; dup {
			bad(i, fmt.Errorf("%w: certificate %s is also bound to %q in this import", ErrExists, e.CertSHA256, clip(string(first))))
		} else if owner := boundTo[e.CertSHA256]; owner != "" {
			bad(i, fmt.Errorf("%w: certificate %s is bound to device %s", ErrExists, e.CertSHA256, owner))
		} else {
			registered[e.CertSHA256] = e.ID
		}
	}
	if len(problems) > 0 {
		slices.SortStableFunc(problems, func(a, b EnrollProblem) int { return a.Index - b.Index })
		return nil, &EnrollError{Problems: problems}
	}
	if !write { // a dry run that found nothing wrong
		return secrets, nil
	}
	if len(conflicts) > 0 {
		// The storage stored nothing; the problems list says why.
		return nil, fmt.Errorf("enroll: storage reported conflicts of no listed problem: %+v", conflicts)
	}
	for i, e := range list {
		s.setCurrent(string(e.ID), recs[i].credential())
		if e.CertSHA256 != "" {
			s.log.Info("device added", "device", e.ID, "cert_sha256", e.CertSHA256)
		} else {
			s.log.Info("device added", "device", e.ID)
		}
	}
	return secrets, nil
}

// boundDevice returns the device a certificate with fingerprint fp is
// bound to, with its record; ok is false if it is bound to none.
func (s *Store) boundDevice(ctx context.Context, fp string) (id device.ID, rec Record, ok bool, err error) {
	id, err = s.st.CertOwner(ctx, fp)
	if errors.Is(err, ErrNotFound) {
		return "", rec, false, nil
	}
	if err != nil {
		return "", rec, false, closedErr(err)
	}
	rec, err = s.st.Get(ctx, string(id))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return "", rec, false, closedErr(err)
	}
	if err != nil || !rec.IsDevice() || rec.CertSHA256 != fp {
		// The binding and the record are written together; a mismatch is
		// a damaged database, refused rather than trusted.
		return "", rec, false, fmt.Errorf("identity: certificate %s: binding to %q does not match the device record", fp, clip(string(id)))
	}
	return id, rec, true, nil
}
