package main

import (
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"azyq/domain"
)

// TestReadRegistry protects the registry file format: what is accepted,
// what is rejected with which line number and reason, and that a bad row
// never stops the rows after it.
func TestReadRegistry(t *testing.T) {
	type rej struct {
		line int
		has  string // a fragment of the reason
	}
	cases := []struct {
		name     string
		in       string
		families []string // family ids accepted, in order
		lines    []int    // their line numbers
		rejected []rej
	}{
		{name: "header and rows",
			in:       "family_id,members,city\nF-1,4,Pavlodar\nF-2,1,Almaty\n",
			families: []string{"F-1", "F-2"}, lines: []int{2, 3}},
		{name: "no header",
			in:       "F-1,4,Pavlodar\nF-2,30,\n",
			families: []string{"F-1", "F-2"}, lines: []int{1, 2}},
		{name: "byte order mark and CRLF",
			in:       "\ufefffamily_id,members,city\r\nF-1,4,Pavlodar\r\nF-2,2,Kokshetau\r\n",
			families: []string{"F-1", "F-2"}, lines: []int{2, 3}},
		{name: "byte order mark without header",
			in:       "\ufeffF-1,4,Pavlodar\n",
			families: []string{"F-1"}, lines: []int{1}},
		{name: "quoted fields: comma, quote, and a newline the gateway refuses",
			in:       "F-1,4,\"Ust-Kamenogorsk, \"\"East\"\"\"\n\"F-2\",\"3\",\"Two\nlines\"\nF-3,1,x\n",
			families: []string{"F-1", "F-3"}, lines: []int{1, 4},
			rejected: []rej{{2, "control characters"}}},
		{name: "spaces around fields",
			in:       " F-1 , 4 , Pavlodar \n",
			families: []string{"F-1"}, lines: []int{1}},
		{name: "no trailing newline, blank lines skipped",
			in:       "F-1,4,A\n\n\nF-2,4,B",
			families: []string{"F-1", "F-2"}, lines: []int{1, 4}},
		{name: "too many members",
			in:       "F-1,31,A\nF-2,4,B\n",
			families: []string{"F-2"}, lines: []int{2},
			rejected: []rej{{1, `members "31" must be a whole number 1-30`}}},
		{name: "zero, negative and non-numeric members",
			in:       "F-1,0,A\nF-2,-1,A\nF-3,four,A\nF-4,2.5,A\nF-5,,A\n",
			rejected: []rej{{1, "members"}, {2, "members"}, {3, "members"}, {4, "members"}, {5, "members"}}},
		{name: "bad family ids",
			in: "F 1,4,A\n,4,A\n" + strings.Repeat("x", 65) + ",4,A\nF/1,4,A\nФ-1,4,A\n" +
				strings.Repeat("y", 64) + ",4,A\n",
			families: []string{strings.Repeat("y", 64)}, lines: []int{6},
			rejected: []rej{{1, "family_id"}, {2, "family_id"}, {3, "family_id"}, {4, "family_id"}, {5, "family_id"}}},
		{name: "city limits",
			in: "F-1,4," + strings.Repeat("c", 65) + "\nF-2,4," + strings.Repeat("c", 64) +
				"\nF-3,4,\"tab\there\"\nF-4,4,\xff\xfe\nF-5,4,Өскемен\n",
			families: []string{"F-2", "F-5"}, lines: []int{2, 5},
			rejected: []rej{{1, "city is 65 bytes"}, {3, "control characters"}, {4, "UTF-8"}}},
		{name: "wrong field counts",
			in:       "F-1,4\nF-2,4,A,extra\nF-3,4,A\n",
			families: []string{"F-3"}, lines: []int{3},
			rejected: []rej{{1, "has 2 fields"}, {2, "has 4 fields"}}},
		{name: "malformed quotes do not stop the file",
			in:       "F-1,4,A\nF-2,4,bad\"quote\nF-3,4,C\n",
			families: []string{"F-1", "F-3"}, lines: []int{1, 3},
			rejected: []rej{{2, "malformed CSV"}}},
		{name: "duplicates reject every row of the family",
			in:       "F-1,4,A\nF-2,4,B\nF-1,5,A\nF-3,1,C\nF-1,4,A\n",
			families: []string{"F-2", "F-3"}, lines: []int{2, 4},
			rejected: []rej{{1, "first on line 1"}, {3, "appears more than once"}, {5, "appears more than once"}}},
		{name: "header only",
			in: "family_id,members,city\n"},
		{name: "empty file",
			in: ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rows, rejected, err := readRegistry(strings.NewReader(c.in))
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			var lines []int
			for _, r := range rows {
				ids = append(ids, r.FamilyID)
				lines = append(lines, r.line)
			}
			if !reflect.DeepEqual(ids, c.families) || !reflect.DeepEqual(lines, c.lines) {
				t.Errorf("accepted %q on lines %v, want %q on lines %v", ids, lines, c.families, c.lines)
			}
			if len(rejected) != len(c.rejected) {
				t.Fatalf("rejected %+v, want %+v", rejected, c.rejected)
			}
			for i, want := range c.rejected {
				if rejected[i].line != want.line || !strings.Contains(rejected[i].reason, want.has) {
					t.Errorf("rejection %d = line %d %q, want line %d containing %q",
						i, rejected[i].line, rejected[i].reason, want.line, want.has)
				}
			}
		})
	}
}

// TestReadRegistryValues checks that an accepted row carries its values,
// unquoted and trimmed, exactly as they will be posted.
func TestReadRegistryValues(t *testing.T) {
	rows, _, err := readRegistry(strings.NewReader("\"F-1\", 07 ,\"Ust-Kamenogorsk, East\"\n"))
	if err != nil || len(rows) != 1 {
		t.Fatalf("%+v, %v", rows, err)
	}
	want := family{FamilyID: "F-1", Members: 7, City: "Ust-Kamenogorsk, East"}
	if rows[0].family != want {
		t.Fatalf("row %+v, want %+v", rows[0].family, want)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// registry makes a registry file of n families F-000001… with members
// cycling 1-5, and returns its content and the sum of face values in tiyn
// for the default programme in 2026.
func registry(n int) (string, domain.Tiyn) {
	var b strings.Builder
	b.WriteString("family_id,members,city\r\n")
	var face domain.Tiyn
	for i := 1; i <= n; i++ {
		m := 1 + i%5
		fmt.Fprintf(&b, "F-%06d,%d,Pavlodar\r\n", i, m)
		face += domain.Tiyn(m * 4325 * 100)
	}
	return b.String(), face
}

// TestImportChunks protects the import's contract with a real gateway:
// valid rows are issued in chunks, the summary counts created, existing and
// rejected rows, --out maps every family to its voucher, a second run of
// the same file creates nothing, and the vouchers are really in the ledger.
func TestImportChunks(t *testing.T) {
	g := startGateway(t, nil)
	content, face := registry(23)
	content += "F-bad id,4,Pavlodar\r\nF-000099,31,Pavlodar\r\n" // lines 25 and 26
	file := writeFile(t, "registry.csv", content)
	out := filepath.Join(t.TempDir(), "out.csv")

	status, stdout, stderr := g.ctl(nil, "import", file, "--month", "2026-12", "--chunk", "5", "--out", out)
	if status != exitProblem {
		t.Fatalf("status %d, want %d (rows were rejected)\n%s%s", status, exitProblem, stdout, stderr)
	}
	for label, want := range map[string]int{"rows": 25, "valid": 23, "created": 23, "existing": 0, "rejected": 2} {
		if got := summaryValue(stdout, label); got != want {
			t.Errorf("%s = %d, want %d\n%s", label, got, want, stdout)
		}
	}
	if summaryValue(stdout, "not posted") != -1 {
		t.Errorf("rows reported as not posted:\n%s", stdout)
	}
	for _, want := range []string{"line 25: family_id", "line 26: members", formatTiyn(face)} {
		if !strings.Contains(stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout)
		}
	}

	// --out holds one row per issued family with its voucher.
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil || len(recs) != 24 {
		t.Fatalf("--out has %d records, %v", len(recs), err)
	}
	month := domain.MakeMonth(2026, 12)
	for _, rec := range recs[1:] {
		v, err := g.led.VoucherByFamily(month, rec[0])
		if err != nil || v.ID.String() != rec[1] || rec[4] != "true" {
			t.Errorf("--out row %q: ledger has %+v, %v", rec, v, err)
		}
	}
	if b := g.led.Books(); b.VoucherCount != 23 || b.Issued != face {
		t.Fatalf("ledger holds %d vouchers worth %d, want 23 worth %d", b.VoucherCount, b.Issued, face)
	}

	// The same valid rows again: all existing, nothing new.
	content, _ = registry(23)
	file = writeFile(t, "again.csv", content)
	status, stdout, _ = g.ctl(nil, "import", "--month", "2026-12", "--chunk", "10", file)
	if status != exitOK || summaryValue(stdout, "created") != 0 || summaryValue(stdout, "existing") != 23 {
		t.Fatalf("second import: status %d\n%s", status, stdout)
	}
	if b := g.led.Books(); b.VoucherCount != 23 {
		t.Fatalf("second import made vouchers: %d", b.VoucherCount)
	}
}

// TestImportRetries protects the retry of a chunk: while the gateway
// answers 503 the chunk is posted again, and it succeeds once the gateway
// is ready, with nothing issued twice.
func TestImportRetries(t *testing.T) {
	g := startGateway(t, nil)
	content, _ := registry(7)
	file := writeFile(t, "registry.csv", content)

	g.srv.SetReady(false)
	sleeps := 0
	status, stdout, stderr := g.ctl(func() {
		sleeps++
		if sleeps == 2 {
			g.srv.SetReady(true)
		}
	}, "import", file, "--month", "2026-12", "--chunk", "3")
	if status != exitOK {
		t.Fatalf("status %d\n%s%s", status, stdout, stderr)
	}
	if sleeps != 2 || strings.Count(stderr, "retrying lines 2-4") != 2 || !strings.Contains(stderr, "503 unavailable") {
		t.Errorf("%d retries; stderr:\n%s", sleeps, stderr)
	}
	if summaryValue(stdout, "created") != 7 || g.led.Books().VoucherCount != 7 {
		t.Fatalf("after retries:\n%s", stdout)
	}
}

// TestImportFailures protects the exit status and the summary when chunks
// cannot be issued: an unreachable gateway (retried, then given up), a
// wrong token and a month without MRP (not retried); nothing is issued.
func TestImportFailures(t *testing.T) {
	g := startGateway(t, nil)
	content, _ := registry(4)
	file := writeFile(t, "registry.csv", content)

	t.Run("unreachable", func(t *testing.T) {
		dead := startGateway(t, nil)
		dead.stop()
		sleeps := 0
		status, stdout, _ := dead.ctl(func() { sleeps++ }, "import", file, "--month", "2026-12")
		if status != exitProblem || sleeps != retriesMax || summaryValue(stdout, "not posted") != 4 ||
			!strings.Contains(stdout, "cannot reach the gateway") {
			t.Fatalf("status %d after %d retries:\n%s", status, sleeps, stdout)
		}
	})
	t.Run("wrong token", func(t *testing.T) {
		status, stdout, _ := g.ctl(func() { t.Error("retried a 401") },
			"--token", "wrong", "import", file, "--month", "2026-12", "--chunk", "2")
		if status != exitProblem || summaryValue(stdout, "not posted") != 4 || !strings.Contains(stdout, "401 unauthenticated") {
			t.Fatalf("status %d:\n%s", status, stdout)
		}
	})
	t.Run("month without MRP", func(t *testing.T) {
		status, stdout, _ := g.ctl(func() { t.Error("retried a 422") }, "import", file, "--month", "2031-01")
		if status != exitProblem || !strings.Contains(stdout, "422 mrp_unknown") {
			t.Fatalf("status %d:\n%s", status, stdout)
		}
	})
	if n := g.led.Books().VoucherCount; n != 0 {
		t.Fatalf("failed imports issued %d vouchers", n)
	}
}

// TestImportUsage protects the operator from a wrong invocation: bad
// flags and files are exit status 2 and post nothing; --dry-run checks
// the file and posts nothing.
func TestImportUsage(t *testing.T) {
	g := startGateway(t, nil)
	content, _ := registry(3)
	file := writeFile(t, "registry.csv", content)
	for _, args := range [][]string{
		{"import", file},
		{"import", file, "--month", "2026-13"},
		{"import", file, "--month", "2026-12", "--chunk", "0"},
		{"import", file, "--month", "2026-12", "--chunk", "100001"},
		{"import", "--month", "2026-12"},
		{"import", filepath.Join(t.TempDir(), "missing.csv"), "--month", "2026-12"},
		{"import", file, "other", "--month", "2026-12"},
	} {
		if status, _, stderr := g.ctl(nil, args...); status != exitUsage || stderr == "" {
			t.Errorf("%q: status %d, stderr %q", args, status, stderr)
		}
	}
	status, stdout, _ := g.ctl(nil, "import", file, "--month", "2026-12", "--dry-run")
	if status != exitOK || summaryValue(stdout, "valid") != 3 || !strings.Contains(stdout, "dry run") {
		t.Errorf("dry run: status %d\n%s", status, stdout)
	}
	if n := g.led.Books().VoucherCount; n != 0 {
		t.Fatalf("usage errors issued %d vouchers", n)
	}
}
