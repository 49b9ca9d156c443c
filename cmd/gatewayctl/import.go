package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/schollz/progressbar/v3"

	"azyq/domain"
	"azyq/ledger"
)

func init() {
	register(&command{
		name:    "import",
		summary: "issue a month's vouchers to the families of a registry CSV file",
		usage: "import FILE --month YYYY-MM [--chunk 10000] [--dry-run] [--out FILE] [--rejects FILE]\n\n" +
			"FILE is CSV: family_id,members,city (a header row is optional; UTF-8,\n" +
			"a byte order mark and CRLF line ends are accepted). Each row is checked\n" +
			"first: family_id 1-64 characters of A-Z a-z 0-9 _ -, members 1-30, city\n" +
			"at most 64 bytes of UTF-8 text, each family once in the file (every row\n" +
			"of a family that appears twice is rejected). Valid rows are posted to\n" +
			"POST /v1/issuances in chunks; the summary lists every rejected row.\n" +
			"Exit status 1 if any row was rejected or any chunk failed.",
		run: runImport,
	})
}

// Limits of an import.
const (
	// registryRowsMax bounds the rows of one file: a country's month is a
	// few million families.
	registryRowsMax = 10_000_000
	// chunkMax is the most families the contract allows in one issuance.
	chunkMax     = 100_000
	chunkDefault = 10_000
	// retriesMax bounds the attempts at one chunk after the first.
	retriesMax = 6
	// retryDelayMax caps the doubling wait between attempts.
	retryDelayMax = 30 * time.Second
	// rejectsShownMax bounds the rejected rows printed in the summary;
	// --rejects writes them all.
	rejectsShownMax = 1000
)

// retryDelay is the first wait before retrying a chunk; it doubles.
const retryDelay = time.Second

// family is one family of an issuance request, as the contract spells it.
type family struct {
	FamilyID string `json:"family_id"`
	Members  int    `json:"members"`
	City     string `json:"city"`
}

// registryRow is a valid row of a registry file.
type registryRow struct {
	line int
	family
}

// rejection is a row of a registry file that will not be imported.
type rejection struct {
	line   int
	reason string
}

// readRegistry reads a registry CSV file and checks every row. It returns
// the valid rows and the rejected ones, both in file order; an error means
// the file could not be read at all.
func readRegistry(r io.Reader) ([]registryRow, []rejection, error) {
	// Drop a UTF-8 byte order mark: spreadsheet exports begin with one.
	br := bufio.NewReader(r)
	if bom, err := br.Peek(3); err == nil && bytes.Equal(bom, []byte("\xef\xbb\xbf")) {
		br.Discard(3)
	}
	cr := csv.NewReader(br)
	cr.FieldsPerRecord = -1 // a wrong field count is a rejected row, not a fatal error
	cr.ReuseRecord = true

	var rows []registryRow
	var rejected []rejection
	first := map[string]int{} // family id → line of its first row
	dup := map[string]bool{}  // family ids that appear more than once
	for n := 0; ; n++ {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if n >= registryRowsMax {
			return nil, nil, fmt.Errorf("cannot read more than %d rows: split the file", registryRowsMax)
		}
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			rejected = append(rejected, rejection{pe.StartLine, "malformed CSV: " + pe.Err.Error()})
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		line, _ := cr.FieldPos(0)
		if n == 0 && isHeader(rec) {
			continue
		}
		row, reason := checkRow(rec)
		if reason != "" {
			rejected = append(rejected, rejection{line, reason})
			continue
		}
		if _, seen := first[row.FamilyID]; seen {
			dup[row.FamilyID] = true
		} else {
			first[row.FamilyID] = line
		}
		rows = append(rows, registryRow{line: line, family: row})
	}

	// Reject every row of a family that appears twice: the file does not
	// say which member count is right, and an issued voucher never changes.
	if len(dup) > 0 {
		kept := rows[:0]
		for _, row := range rows {
			if !dup[row.FamilyID] {
				kept = append(kept, row)
				continue
			}
			reason := fmt.Sprintf("family_id %q appears more than once (first on line %d)", row.FamilyID, first[row.FamilyID])
			rejected = append(rejected, rejection{row.line, reason})
		}
		rows = kept
		sortRejections(rejected)
	}
	return rows, rejected, nil
}

func sortRejections(r []rejection) {
	// Insertion by line keeps this dependency-free and is fast on the
	// nearly sorted slices readRegistry builds.
	for i := 1; i < len(r); i++ {
		for j := i; j > 0 && r[j].line < r[j-1].line; j-- {
			r[j], r[j-1] = r[j-1], r[j]
		}
	}
}

// isHeader reports whether the first record names the columns.
func isHeader(rec []string) bool {
	return len(rec) >= 1 && strings.EqualFold(strings.TrimSpace(rec[0]), "family_id")
}

// checkRow validates one record with the rules of POST /v1/issuances and
// returns the family or why it is rejected.
func checkRow(rec []string) (family, string) {
	if len(rec) != 3 {
		return family{}, fmt.Sprintf("has %d fields, want 3: family_id,members,city", len(rec))
	}
	id := strings.TrimSpace(rec[0])
	members := strings.TrimSpace(rec[1])
	city := strings.TrimSpace(rec[2])
	if !ledger.ValidID(id) {
		return family{}, fmt.Sprintf("family_id %q must be 1-%d characters of A-Z a-z 0-9 _ -", id, ledger.IDMax)
	}
	n, err := strconv.Atoi(members)
	if err != nil || n < 1 || n > ledger.MembersMax {
		return family{}, fmt.Sprintf("members %q must be a whole number 1-%d", members, ledger.MembersMax)
	}
	if len(city) > ledger.CityMax {
		return family{}, fmt.Sprintf("city is %d bytes, at most %d", len(city), ledger.CityMax)
	}
	if !utf8.ValidString(city) || strings.ContainsFunc(city, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return family{}, fmt.Sprintf("city %q must be UTF-8 text without control characters", city)
	}
	return family{FamilyID: id, Members: n, City: city}, ""
}

// issuanceAnswer is the gateway's answer to POST /v1/issuances.
type issuanceAnswer struct {
	Month    string `json:"month"`
	Created  int    `json:"created"`
	Existing int    `json:"existing"`
	Vouchers []struct {
		FamilyID  string `json:"family_id"`
		VoucherID string `json:"voucher_id"`
		FaceValue int64  `json:"face_value"`
		Status    string `json:"status"`
		Created   bool   `json:"created"`
	} `json:"vouchers"`
}

// importSummary is what an import did.
type importSummary struct {
	read, valid       int
	created, existing int
	faceCreated       domain.Tiyn
	rejected          []rejection
	// notPosted counts valid rows that were not issued: their chunk
	// failed, or the import stopped before reaching them.
	notPosted int
	failure   error
}

func runImport(e *env, args []string) int {
	fs := e.flags("import")
	monthFlag := fs.String("month", "", "month of the vouchers, YYYY-MM (required)")
	chunk := fs.Int("chunk", chunkDefault, fmt.Sprintf("families per request, 1-%d", chunkMax))
	dryRun := fs.Bool("dry-run", false, "check the file and print the summary without posting anything")
	outPath := fs.String("out", "", "write family_id,voucher_id,face_value,status,created for every issued row to this CSV file")
	rejectsPath := fs.String("rejects", "", "write every rejected row (line,reason) to this CSV file")
	path, rest := splitFirstArg(args)
	if ok, status := parse(fs, rest); !ok {
		return status
	}
	if path == "" && fs.NArg() == 1 {
		path = fs.Arg(0)
	} else if fs.NArg() > 0 {
		e.errorf("import: unexpected arguments %q", fs.Args())
		return exitUsage
	}
	if path == "" {
		e.errorf("import: name the registry file: gatewayctl import FILE --month YYYY-MM")
		return exitUsage
	}
	month, err := domain.ParseMonth(*monthFlag)
	if err != nil {
		e.errorf("import: --month %q must be YYYY-MM", *monthFlag)
		return exitUsage
	}
	if *chunk < 1 || *chunk > chunkMax {
		e.errorf("import: --chunk %d must be 1-%d", *chunk, chunkMax)
		return exitUsage
	}

	f, err := os.Open(path)
	if err != nil {
		e.errorf("import: cannot open registry file: %v", err)
		return exitUsage
	}
	rows, rejected, err := readRegistry(f)
	f.Close()
	if err != nil {
		e.errorf("import: cannot read registry file %q: %v", path, err)
		return exitUsage
	}
	sum := &importSummary{valid: len(rows), rejected: rejected, read: len(rows) + len(rejected)}

	var out *csv.Writer
	if *outPath != "" && !*dryRun {
		of, err := os.Create(*outPath)
		if err != nil {
			e.errorf("import: cannot create --out file: %v", err)
			return exitUsage
		}
		defer of.Close()
		out = csv.NewWriter(of)
		out.Write([]string{"family_id", "voucher_id", "face_value", "status", "created"})
	}

	if !*dryRun && len(rows) > 0 {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		imp := &importer{e: e, c: e.client(), month: month, out: out}
		imp.run(ctx, rows, *chunk, sum)
	}
	if out != nil {
		out.Flush()
		if err := out.Error(); err != nil {
			e.errorf("import: cannot write --out file: %v", err)
			sum.failure = errors.Join(sum.failure, err)
		}
	}
	if *rejectsPath != "" {
		if err := writeRejections(*rejectsPath, sum.rejected); err != nil {
			e.errorf("import: cannot write --rejects file: %v", err)
			sum.failure = errors.Join(sum.failure, err)
		}
	}

	printSummary(e.stdout, month, sum, *dryRun)
	if len(sum.rejected) > 0 || sum.notPosted > 0 || sum.failure != nil {
		return exitProblem
	}
	return exitOK
}

// splitFirstArg lets the file come before the flags, as the usage shows
// ("import FILE --month …"); the flag package stops at the first
// non-flag argument.
func splitFirstArg(args []string) (string, []string) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return args[0], args[1:]
	}
	return "", args
}

// importer posts the valid rows of a registry file chunk by chunk.
type importer struct {
	e     *env
	c     *client
	month domain.Month
	out   *csv.Writer
}

func (imp *importer) run(ctx context.Context, rows []registryRow, chunk int, sum *importSummary) {
	var bar *progressbar.ProgressBar
	if imp.e.isTerminal {
		bar = progressbar.NewOptions(len(rows),
			progressbar.OptionSetWriter(imp.e.stderr),
			progressbar.OptionSetDescription("issuing "+imp.month.String()),
			progressbar.OptionShowCount(),
			progressbar.OptionSetItsString("families"),
			progressbar.OptionShowIts(),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish())
	}

	for lo := 0; lo < len(rows); lo += chunk {
		part := rows[lo:min(lo+chunk, len(rows))]
		ans, err := imp.post(ctx, part)
		if err != nil {
			// Stop at the first chunk that fails for good: the same cause
			// (a wrong token, a month without MRP) would fail every
			// later chunk too.
			sum.notPosted = len(rows) - lo
			sum.failure = fmt.Errorf("cannot issue rows on lines %d-%d: %w", part[0].line, part[len(part)-1].line, err)
			break
		}
		sum.created += ans.Created
		sum.existing += ans.Existing
		for i, v := range ans.Vouchers {
			if v.Created {
				sum.faceCreated += domain.Tiyn(v.FaceValue)
			}
			if imp.out != nil {
				imp.out.Write([]string{part[i].FamilyID, v.VoucherID, strconv.FormatInt(v.FaceValue, 10),
					v.Status, strconv.FormatBool(v.Created)})
			}
		}
		if bar != nil {
			bar.Add(len(part))
		}
	}
	if bar != nil {
		bar.Finish()
	}
}

// post issues one chunk. Issuance is idempotent per (month, family): a
// family already issued gets its existing voucher back and never a second
// one, so posting a chunk again after a lost answer or a 503 is safe — the
// retry reports those families as existing instead of created.
func (imp *importer) post(ctx context.Context, rows []registryRow) (*issuanceAnswer, error) {
	req := struct {
		Month    string   `json:"month"`
		Families []family `json:"families"`
	}{Month: imp.month.String(), Families: make([]family, len(rows))}
	for i := range rows {
		req.Families[i] = rows[i].family
	}
	body, err := json.Marshal(req)
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode issuance: %v", err))
	}

	delay := retryDelay
	for attempt := 0; ; attempt++ {
		data, err := imp.c.do(ctx, "POST", "/v1/issuances", body)
		if err == nil {
			return checkIssuance(data, rows)
		}
		ae := asAPIError(err)
		if ae != nil && !ae.retryable() || attempt == retriesMax || ctx.Err() != nil {
			return nil, err
		}
		wait := delay
		if ae != nil && ae.RetryAfter > wait {
			wait = ae.RetryAfter
		}
		fmt.Fprintf(imp.e.stderr, "gatewayctl: import: retrying lines %d-%d in %s: %v\n",
			rows[0].line, rows[len(rows)-1].line, wait, err)
		if err := imp.e.sleep(ctx, wait); err != nil {
			return nil, err
		}
		delay = min(2*delay, retryDelayMax)
	}
}

// checkIssuance decodes an issuance answer and checks that it answers the
// rows sent, in order.
func checkIssuance(data []byte, rows []registryRow) (*issuanceAnswer, error) {
	var ans issuanceAnswer
	if err := json.Unmarshal(data, &ans); err != nil {
		return nil, fmt.Errorf("cannot decode the issuance answer: %w", err)
	}
	if len(ans.Vouchers) != len(rows) || ans.Created+ans.Existing != len(rows) {
		return nil, fmt.Errorf("cannot match the issuance answer: %d vouchers (created %d, existing %d) for %d families",
			len(ans.Vouchers), ans.Created, ans.Existing, len(rows))
	}
	for i := range rows {
		if ans.Vouchers[i].FamilyID != rows[i].FamilyID {
			return nil, fmt.Errorf("cannot match the issuance answer: voucher %d is for family %q, sent %q",
				i, ans.Vouchers[i].FamilyID, rows[i].FamilyID)
		}
	}
	return &ans, nil
}

func writeRejections(path string, rejected []rejection) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	w.Write([]string{"line", "reason"})
	for _, r := range rejected {
		w.Write([]string{strconv.Itoa(r.line), r.reason})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func printSummary(w io.Writer, month domain.Month, sum *importSummary, dryRun bool) {
	if dryRun {
		fmt.Fprintf(w, "dry run: nothing was posted\n")
	}
	fmt.Fprintf(w, "month      %s\n", month)
	fmt.Fprintf(w, "rows       %d\n", sum.read)
	fmt.Fprintf(w, "valid      %d\n", sum.valid)
	fmt.Fprintf(w, "created    %d (face value %s)\n", sum.created, formatTiyn(sum.faceCreated))
	fmt.Fprintf(w, "existing   %d\n", sum.existing)
	if sum.notPosted > 0 {
		fmt.Fprintf(w, "not posted %d\n", sum.notPosted)
	}
	fmt.Fprintf(w, "rejected   %d\n", len(sum.rejected))
	for i, r := range sum.rejected {
		if i == rejectsShownMax {
			fmt.Fprintf(w, "  … and %d more (--rejects FILE lists them all)\n", len(sum.rejected)-i)
			break
		}
		fmt.Fprintf(w, "  line %d: %s\n", r.line, r.reason)
	}
	if sum.failure != nil {
		fmt.Fprintf(w, "failed: %v\n", sum.failure)
	}
}

// formatTiyn writes an amount in tiyn with its value in tenge.
func formatTiyn(t domain.Tiyn) string {
	sign := ""
	v := int64(t)
	if v < 0 {
		sign, v = "-", -v
	}
	tenge := strconv.FormatInt(v/100, 10)
	var grouped []byte
	for i := range len(tenge) {
		if i > 0 && (len(tenge)-i)%3 == 0 {
			grouped = append(grouped, ',')
		}
		grouped = append(grouped, tenge[i])
	}
	return fmt.Sprintf("%d tiyn = %s%s.%02d KZT", t, sign, grouped, v%100)
}
