package firmware

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// MaxRanges is the most byte ranges one download request may ask for.
// Resuming clients ask for one; a request for more is refused with 416,
// since RFC 9110 (§14.2, §15.5.17) lets a server reject "many small
// ranges", the tool of an amplification attack: 8,000 copies of "0-0" cost
// a multipart body 4.3 times the image.
const MaxRanges = 16

// Reasons a Range header is refused with 416 Range Not Satisfiable. Each
// answer carries "Content-Range: bytes */<size>".
var (
	errRangeSyntax        = errors.New("invalid Range header")
	errRangeCount         = fmt.Errorf("more than %d ranges", MaxRanges)
	errRangeOverlap       = errors.New("the ranges overlap: together they ask for more bytes than the image has")
	errRangeUnsatisfiable = errors.New("no range overlaps the image")
)

// byteRange is a satisfiable range: length bytes from start.
type byteRange struct{ start, length int64 }

func (r byteRange) end() int64 { return r.start + r.length } // exclusive

// parseRange parses the Range header field values of a GET for a
// representation of size bytes (RFC 9110 §14.1). It returns nil and no
// error when the field should be ignored (absent, another range unit, an
// empty image), and otherwise the satisfiable ranges, with overlapping and
// adjacent ones coalesced (§14.2), in the order their first range-spec
// appeared. It refuses, with an error for a 416: a malformed field (also a
// field given twice, a last-pos below its first-pos, a sign or a space in
// a number), more than MaxRanges range-specs, range-specs none of which is
// satisfiable (a first-pos at or past the end, or the suffix "-0"), and
// range-specs whose satisfiable parts add up to more than size bytes.
// Numbers too large for an int64 count as infinite. It reads at most
// MaxRanges+1 range-specs.
func parseRange(values []string, size int64) ([]byteRange, error) {
	switch {
	case len(values) == 0:
		return nil, nil
	case len(values) > 1:
		return nil, errRangeSyntax
	}
	unit, set, ok := strings.Cut(values[0], "=")
	if !ok || !isToken(unit) {
		return nil, errRangeSyntax
	}
	if !strings.EqualFold(unit, "bytes") || size == 0 {
		return nil, nil // RFC 9110 §14.2: ignore units we do not know
	}
	var (
		ranges []byteRange
		specs  int
		total  int64
	)
	for spec := range strings.SplitSeq(set, ",") {
		spec = strings.Trim(spec, " \t")
		if spec == "" {
			continue // the list syntax allows empty elements
		}
		if specs++; specs > MaxRanges {
			return nil, errRangeCount
		}
		first, last, ok := strings.Cut(spec, "-")
		if !ok {
			return nil, errRangeSyntax
		}
		var r byteRange
		if first == "" { // suffix-range: the last n bytes
			n, ok := parseDigits(last)
			if !ok {
				return nil, errRangeSyntax
			}
			if n == 0 {
				continue // unsatisfiable
			}
			r.length = min(n, size)
			r.start = size - r.length
		} else {
			start, ok := parseDigits(first)
			if !ok {
				return nil, errRangeSyntax
			}
			end := int64(math.MaxInt64)
			if last != "" {
				if end, ok = parseDigits(last); !ok || end < start {
					return nil, errRangeSyntax
				}
			}
			if start >= size {
				continue // unsatisfiable
			}
			r.start, r.length = start, min(end, size-1)-start+1
		}
		if total += r.length; total > size {
			return nil, errRangeOverlap
		}
		ranges = append(ranges, r)
	}
	switch {
	case specs == 0:
		return nil, errRangeSyntax // range-set needs one range-spec
	case len(ranges) == 0:
		return nil, errRangeUnsatisfiable
	}
	return coalesce(ranges), nil
}

// coalesce merges overlapping and adjacent ranges. A merged range takes the
// place of the first of its parts, so ranges that merge with nothing keep
// the requested order (RFC 9110 §14.2).
func coalesce(ranges []byteRange) []byteRange {
	type item struct {
		byteRange
		order int // index of the first range-spec it covers
	}
	sorted := make([]item, len(ranges))
	for i, r := range ranges {
		sorted[i] = item{r, i}
	}
	slices.SortFunc(sorted, func(a, b item) int { return cmp.Compare(a.start, b.start) })
	merged := sorted[:1]
	for _, it := range sorted[1:] {
		cur := &merged[len(merged)-1]
		if it.start > cur.end() {
			merged = append(merged, it)
			continue
		}
		cur.length = max(cur.end(), it.end()) - cur.start
		cur.order = min(cur.order, it.order)
	}
	slices.SortFunc(merged, func(a, b item) int { return cmp.Compare(a.order, b.order) })
	out := make([]byteRange, len(merged))
	for i, it := range merged {
		out[i] = it.byteRange
	}
	return out
}

// formatRange is the Range header value asking for ranges.
func formatRange(ranges []byteRange) string {
	var b strings.Builder
	b.WriteString("bytes=")
	for i, r := range ranges {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d-%d", r.start, r.end()-1)
	}
	return b.String()
}

// parseDigits parses 1*DIGIT, saturating at math.MaxInt64.
func parseDigits(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil { // only out of range is left
		return math.MaxInt64, true
	}
	return n, true
}

// isToken reports whether s is an RFC 9110 token (a range unit).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// rangeApplies reports whether ServeContent would act on a Range header
// of r for a representation with the strong ETag etag and no
// Last-Modified: a failed If-Match (412) or a matching If-None-Match (304)
// comes first (RFC 9110 §13.2.2), and If-Range must name etag exactly (a
// date never matches without Last-Modified). When it does not apply, the
// caller drops the Range header, so ServeContent never acts on one it has
// not checked.
func rangeApplies(r *http.Request, etag string) bool {
	if im := r.Header.Get("If-Match"); im != "" && !etagListMatch(im, etag, false) {
		return false
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagListMatch(inm, etag, true) {
		return false
	}
	if ir := r.Header.Get("If-Range"); ir != "" && strings.Trim(ir, " \t") != etag {
		return false
	}
	return true
}

// etagListMatch reports whether list, an If-Match or If-None-Match value,
// is "*" or holds etag (a strong entity-tag); weak allows a W/ prefix in
// list (the weak comparison). A malformed list matches nothing.
func etagListMatch(list, etag string, weak bool) bool {
	list = strings.Trim(list, " \t")
	if list == "*" {
		return true
	}
	for {
		list = strings.TrimLeft(list, " \t,")
		if list == "" {
			return false
		}
		isWeak := strings.HasPrefix(list, "W/")
		if isWeak {
			list = list[2:]
		}
		if len(list) < 2 || list[0] != '"' {
			return false
		}
		n := strings.IndexByte(list[1:], '"')
		if n < 0 {
			return false
		}
		if tag := list[:n+2]; tag == etag && (weak || !isWeak) {
			return true
		}
		list = list[n+2:]
	}
}
