package firmware_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/firmware"
)

// mustOpenRangeImage opens a store with the 10,000-byte image of the
// Range tests and returns its download URL for dev-1.
func mustOpenRangeImage(tb testing.TB) (e *env, data []byte, img firmware.Image, u string) {
	tb.Helper()
	e = mustOpen(tb, nil)
	data = image(10_000, 12)
	img = mustUpload(tb, e.st, "1.0.0", data)
	u, _ = e.st.URL(img, "dev-1", 0)
	return e, data, img, u
}

// rangeCase is one Range request against a 10,000-byte image and what it
// must get: 200 with the image, 206 with want (inclusive [first, last]
// pairs, in the order of the parts), 304, or a JSON 416.
type rangeCase struct {
	name   string
	hdr    http.Header
	status int
	want   [][2]int64
}

// rangeCases are TestHardening12RangeAmplification's table and
// FuzzRangeHeader's seeds.
func rangeCases(etag string) []rangeCase {
	rng := func(v ...string) http.Header { return http.Header{"Range": v} }
	with := func(h http.Header, k, v string) http.Header { h.Set(k, v); return h }
	repeat := func(spec string, n int) string {
		return "bytes=" + strings.TrimSuffix(strings.Repeat(spec+",", n), ",")
	}
	var sixteen, seventeen []string
	var sixteenWant [][2]int64
	for i := range int64(17) {
		spec := fmt.Sprintf("%d-%d", i*100, i*100+9)
		seventeen = append(seventeen, spec)
		if i < 16 {
			sixteen = append(sixteen, spec)
			sixteenWant = append(sixteenWant, [2]int64{i * 100, i*100 + 9})
		}
	}
	return []rangeCase{
		{"8000 times 0-0", rng(repeat("0-0", 8000)), 416, nil},
		{"15000 times 0-0", rng(repeat("0-0", 15000)), 416, nil},
		{"17 distinct ranges", rng("bytes=" + strings.Join(seventeen, ",")), 416, nil},
		{"16 distinct ranges", rng("bytes=" + strings.Join(sixteen, ",")), 206, sixteenWant},
		{"whole image twice", rng("bytes=0-,0-"), 416, nil},
		{"suffix overlapping everything", rng("bytes=-10000,5-5"), 416, nil},
		{"overlapping, within the size", rng("bytes=0-99,50-149"), 206, [][2]int64{{0, 149}}},
		{"adjacent", rng("bytes=0-99,100-199"), 206, [][2]int64{{0, 199}}},
		{"contained", rng("bytes=0-999,10-19,500-509"), 206, [][2]int64{{0, 999}}},
		{"order kept when nothing merges", rng("bytes=500-599,0-99"), 206, [][2]int64{{500, 599}, {0, 99}}},
		{"merged range takes the first place", rng("bytes=9000-9099,0-9,5-14"), 206, [][2]int64{{9000, 9099}, {0, 14}}},
		{"empty list elements", rng("bytes= ,0-9, ,"), 206, [][2]int64{{0, 9}}},
		{"unit in capitals", rng("Bytes=0-9"), 206, [][2]int64{{0, 9}}},
		{"last-pos past the end", rng("bytes=9990-99999"), 206, [][2]int64{{9990, 9999}}},
		{"last-pos beyond int64", rng("bytes=0-99999999999999999999999"), 206, [][2]int64{{0, 9999}}},
		{"suffix beyond int64", rng("bytes=-99999999999999999999999"), 206, [][2]int64{{0, 9999}}},
		{"one unsatisfiable of two", rng("bytes=20000-,0-9"), 206, [][2]int64{{0, 9}}},
		{"first-pos beyond int64", rng("bytes=99999999999999999999999-"), 416, nil},
		{"suffix of zero", rng("bytes=-0"), 416, nil},
		{"another unit", rng("items=0-9"), 200, nil},
		{"no unit", rng("0-9"), 416, nil},
		{"no range-spec", rng("bytes="), 416, nil},
		{"plus sign", rng("bytes=+5-10"), 416, nil},
		{"minus sign", rng("bytes=--5"), 416, nil},
		{"space in a number", rng("bytes=1 0-20"), 416, nil},
		{"last-pos below first-pos", rng("bytes=10-5"), 416, nil},
		{"two Range fields", rng("bytes=0-9", "bytes=10-19"), 416, nil},
		{"8000 ranges, stale If-Range", with(rng(repeat("0-0", 8000)), "If-Range", `"0000"`), 200, nil},
		{"8000 ranges, If-Range by date", with(rng(repeat("0-0", 8000)), "If-Range", "Mon, 02 Jan 2006 15:04:05 GMT"), 200, nil},
		{"8000 ranges, If-None-Match", with(rng(repeat("0-0", 8000)), "If-None-Match", etag), 304, nil},
		{"8000 ranges, current If-Range", with(rng(repeat("0-0", 8000)), "If-Range", etag), 416, nil},
		{"resume, current If-Range", with(rng("bytes=100-"), "If-Range", etag), 206, [][2]int64{{100, 9999}}},
	}
}

// checkRangeAnswer checks that res (body) is what tc wants for data.
func checkRangeAnswer(t testing.TB, tc rangeCase, res *http.Response, body, data []byte) {
	t.Helper()
	size := int64(len(data))
	if res.StatusCode != tc.status {
		t.Fatalf("status %d, want %d (body %.200q)", res.StatusCode, tc.status, body)
	}
	switch tc.status {
	case 200:
		if !bytes.Equal(body, data) {
			t.Errorf("body: %d bytes, want the %d-byte image", len(body), size)
		}
	case 304:
		if len(body) != 0 {
			t.Errorf("304 with a %d-byte body", len(body))
		}
	case 416:
		var e struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if ct := res.Header.Get("Content-Type"); ct != "application/json" || json.Unmarshal(body, &e) != nil || e.Code != 416 || e.Message == "" {
			t.Errorf("416 answer: Content-Type %q body %q, want a JSON error", ct, body)
		}
		if got, want := res.Header.Get("Content-Range"), fmt.Sprintf("bytes */%d", size); got != want {
			t.Errorf("Content-Range %q, want %q", got, want)
		}
	case 206:
		got := partsOf(t, res, body, size)
		if len(got) != len(tc.want) {
			t.Fatalf("%d parts %v, want %v", len(got), got, tc.want)
		}
		for i, p := range got {
			if p.first != tc.want[i][0] || p.last != tc.want[i][1] {
				t.Errorf("part %d: bytes %d-%d, want %d-%d", i, p.first, p.last, tc.want[i][0], tc.want[i][1])
			}
			if !bytes.Equal(p.data, data[p.first:p.last+1]) {
				t.Errorf("part %d: data differs from the image's bytes %d-%d", i, p.first, p.last)
			}
		}
	}
}

type part struct {
	first, last int64
	data        []byte
}

// partsOf returns the parts of a 206: one, or those of a
// multipart/byteranges body.
func partsOf(t testing.TB, res *http.Response, body []byte, size int64) []part {
	t.Helper()
	mt, params, err := mime.ParseMediaType(res.Header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("206 Content-Type %q: %v", res.Header.Get("Content-Type"), err)
	}
	if mt != "multipart/byteranges" {
		return []part{contentRange(t, res.Header.Get("Content-Range"), size, body)}
	}
	var parts []part
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return parts
		}
		if err != nil {
			t.Fatalf("multipart body: %v", err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("multipart part: %v", err)
		}
		parts = append(parts, contentRange(t, p.Header.Get("Content-Range"), size, b))
	}
}

func contentRange(t testing.TB, cr string, size int64, data []byte) part {
	t.Helper()
	var p part
	var total int64
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &p.first, &p.last, &total); err != nil || total != size {
		t.Fatalf("Content-Range %q: %v (size %d, want %d)", cr, err, total, size)
	}
	if int64(len(data)) != p.last-p.first+1 {
		t.Fatalf("Content-Range %q with %d bytes", cr, len(data))
	}
	p.data = data
	return p
}

// TestHardening12RangeAmplification: a Range header cannot make a download
// cost more than the image. More than firmware.MaxRanges ranges, or ranges
// that together ask for more than the image, get a JSON 416 and serve no
// image byte; overlapping and adjacent ranges are coalesced; single-range
// resumes, If-Range and ETags work as before. Before the fix, 8,000 copies
// of "0-0" got a 206 multipart body larger than the image, "0-,0-" the
// whole image with 200, and "0-99,50-149" two overlapping parts.
func TestHardening12RangeAmplification(t *testing.T) {
	e, data, img, u := mustOpenRangeImage(t)
	etag := `"` + img.SHA256 + `"`
	var counted int64 // the image bytes of the answers so far
	for _, tc := range rangeCases(etag) {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header = tc.hdr.Clone()
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			checkRangeAnswer(t, tc, res, body, data)
			// The answer costs at most the image plus the part headers of
			// MaxRanges parts.
			if limit := len(data) + firmware.MaxRanges*200; len(body) > limit {
				t.Errorf("answer of %d bytes for a %d-byte image (limit %d)", len(body), len(data), limit)
			}
			if res.StatusCode == http.StatusOK || res.StatusCode == http.StatusPartialContent {
				counted += int64(len(body))
			}
			if tc.status == 416 || tc.status == 304 {
				// The server counts after the client has read the body:
				// await the earlier answers' count, then count through the
				// handler itself, synchronously.
				wantServed(t, e.st, counted)
				served := e.st.BytesServed()
				req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
				req.Header = tc.hdr.Clone()
				e.st.DownloadHandler().ServeHTTP(httptest.NewRecorder(), req)
				if got := e.st.BytesServed(); got != served {
					t.Errorf("BytesServed grew by %d on a refused request", got-served)
				}
			}
		})
	}
	if got, err := e.st.Get(t.Context(), "1.0.0"); err != nil || got.SHA256 != img.SHA256 {
		t.Errorf("image after the requests: %+v, %v; want it unchanged", got, err)
	}
}

// FuzzRangeHeader sends arbitrary Range, If-Range and If-None-Match headers
// to the download handler. Invariants: no panic; the answer is a 200 with
// the image, a 304, a JSON 416, or a 206 whose parts are the image's bytes,
// at most MaxRanges, neither overlapping nor adjacent; and it never costs
// more than the image plus MaxRanges part headers.
func FuzzRangeHeader(f *testing.F) {
	e, data, img, u := mustOpenRangeImage(f)
	etag := `"` + img.SHA256 + `"`
	for _, tc := range rangeCases(etag) {
		f.Add(strings.Join(tc.hdr.Values("Range"), "\n"), tc.hdr.Get("If-Range"), tc.hdr.Get("If-None-Match"))
	}
	h := e.st.DownloadHandler()
	f.Fuzz(func(t *testing.T, rangeHdr, ifRange, ifNoneMatch string) {
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		for v := range strings.SplitSeq(rangeHdr, "\n") {
			req.Header.Add("Range", v)
		}
		if ifRange != "" {
			req.Header.Set("If-Range", ifRange)
		}
		if ifNoneMatch != "" {
			req.Header.Set("If-None-Match", ifNoneMatch)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		res := rec.Result()
		body := rec.Body.Bytes()
		if limit := len(data) + firmware.MaxRanges*200; len(body) > limit {
			t.Fatalf("answer of %d bytes for a %d-byte image", len(body), len(data))
		}
		tc := rangeCase{status: res.StatusCode}
		if res.StatusCode == 206 {
			parts := partsOf(t, res, body, int64(len(data)))
			if len(parts) > firmware.MaxRanges {
				t.Fatalf("%d parts, more than %d", len(parts), firmware.MaxRanges)
			}
			for i, p := range parts {
				tc.want = append(tc.want, [2]int64{p.first, p.last})
				for _, q := range parts[:i] {
					if p.first <= q.last+1 && q.first <= p.last+1 {
						t.Fatalf("parts %d-%d and %d-%d overlap or touch", q.first, q.last, p.first, p.last)
					}
				}
			}
		} else if res.StatusCode != 200 && res.StatusCode != 304 && res.StatusCode != 416 {
			t.Fatalf("status %d, want 200, 206, 304 or 416", res.StatusCode)
		}
		checkRangeAnswer(t, tc, res, body, data)
	})
}

// BenchmarkDownloadManyRanges is the amplification request of issue 10
// case 12: 15,000 copies of "0-0" against a 10,000-byte image. Before the
// fix it cost about 0.5 s and a 2.1 MB answer; now a 416 after reading
// MaxRanges+1 of them.
func BenchmarkDownloadManyRanges(b *testing.B) {
	e, _, _, u := mustOpenRangeImage(b)
	rng := "bytes=" + strings.TrimSuffix(strings.Repeat("0-0,", 15000), ",")
	h := e.st.DownloadHandler()
	var answered int
	for b.Loop() {
		req := httptest.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("Range", rng)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		answered = rec.Body.Len()
	}
	b.ReportMetric(float64(answered), "answer-bytes")
}
