package domain

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"
	_ "time/tzdata" // the programme's zone must resolve on machines without zoneinfo
)

// Programme is the policy of one voucher programme: the zone its calendar
// lives in, the MRP by year, the catalogue of eligible goods and the limits
// and schedules the gateway runs by. The zero value is not usable; start
// from DefaultProgramme or LoadProgramme.
type Programme struct {
	// TimeZone names the IANA zone of every calendar rule: month bounds,
	// expiry, cut-off times. Default "Asia/Almaty" (UTC+05:00).
	TimeZone string
	// Location is TimeZone resolved.
	Location *time.Location
	// MRP maps a year to its monthly calculation index in tenge. A voucher
	// is worth one MRP of its month's year per family member. A year that
	// is absent cannot be issued (mrp_unknown).
	MRP map[int]int64
	// Catalogue lists the category codes of socially significant food
	// products; only basket lines in these categories are eligible.
	Catalogue []Category
	// DiscountCapBP is the largest discount a shop may agree, in basis
	// points. Default 1500 (15 %).
	DiscountCapBP int64
	// Grace is how long after its month an active voucher may still be
	// spent. Default zero: spending ends with the month.
	Grace time.Duration
	// QRLifetime is how long a minted QR token stays valid. Default 120 s.
	QRLifetime time.Duration
	// IdempotencyRetention is how long an idempotency record is kept.
	// Default 48 h, the contract's minimum.
	IdempotencyRetention time.Duration
	// CutoffSchedule lists the local times of day ("HH:MM:SS") at which a
	// settlement cut-off runs. Default one, at 23:59:59.
	CutoffSchedule []time.Duration
	// AckDeadline is how long a settlement batch may stay unacknowledged
	// before metrics and alerts call it late. Default 24 h.
	AckDeadline time.Duration
	// Payer is the programme's own account, debited in payment files.
	Payer Payer

	catalogueIndex map[string]struct{}
	catalogueETag  string
}

// Category is one eligible product group of the catalogue.
type Category struct {
	Code string `json:"code"`
	Name string `json:"name"`
}

// Payer is the account the programme pays shops from.
type Payer struct {
	Name string `json:"name"`
	BIN  string `json:"bin"`
	IBAN string `json:"iban"`
	BIC  string `json:"bic"`
}

// DefaultCatalogue is the list of socially significant food products in
// force since January 2026, by category code.
var DefaultCatalogue = []Category{
	{"wheat_flour", "Wheat flour"}, {"bread", "Bread"}, {"pasta", "Pasta"},
	{"buckwheat", "Buckwheat"}, {"rice", "Rice"}, {"millet", "Millet"},
	{"potatoes", "Potatoes"}, {"carrots", "Carrots"}, {"onions", "Onions"},
	{"cabbage", "Cabbage"}, {"tomatoes", "Tomatoes"}, {"cucumbers", "Cucumbers"},
	{"apples", "Apples"}, {"sugar", "Sugar"}, {"salt", "Salt"},
	{"sunflower_oil", "Sunflower oil"}, {"beef", "Beef"},
	{"minced_meat", "Minced meat"}, {"mutton", "Mutton"},
	{"horse_meat", "Horse meat"}, {"fish", "Fish"}, {"chicken", "Chicken"},
	{"milk", "Milk"}, {"kefir", "Kefir"}, {"sour_cream", "Sour cream"},
	{"cottage_cheese", "Cottage cheese"}, {"butter", "Butter"},
	{"cheese", "Cheese"}, {"eggs", "Eggs"}, {"tea", "Tea"},
	{"lentils", "Lentils"},
}

// DefaultProgramme returns the built-in policy of the 2026 programme.
func DefaultProgramme() *Programme {
	p, err := buildProgramme(defaultFile())
	if err != nil {
		panic("BUG: built-in programme is invalid: " + err.Error())
	}
	return p
}

// LoadProgramme reads a programme file; keys it leaves out keep their
// defaults. An empty path gives the defaults. The error names the field
// and the value that is wrong.
func LoadProgramme(path string) (*Programme, error) {
	if path == "" {
		return DefaultProgramme(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read programme file (--program): %w", err)
	}
	p, err := ParseProgramme(data)
	if err != nil {
		return nil, fmt.Errorf("programme file %s: %w", path, err)
	}
	return p, nil
}

// ParseProgramme parses a programme file's JSON over the defaults.
func ParseProgramme(data []byte) (*Programme, error) {
	f := defaultFile()
	builtinMRP := f.MRP
	f.MRP = nil
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("cannot parse programme JSON: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("cannot parse programme JSON: trailing data after the object")
	}

	// MRP entries add to the built-in years rather than replace them, so
	// a file naming only next year keeps this year's index.
	for y, v := range builtinMRP {
		if _, ok := f.MRP[y]; !ok {
			if f.MRP == nil {
				f.MRP = map[string]int64{}
			}
			f.MRP[y] = v
		}
	}
	return buildProgramme(f)
}

// programmeFile is the JSON form of a programme.
type programmeFile struct {
	TimeZone             string           `json:"time_zone"`
	MRP                  map[string]int64 `json:"mrp"`
	Catalogue            []Category       `json:"catalogue"`
	DiscountCapBP        int64            `json:"discount_cap_bp"`
	Grace                string           `json:"grace"`
	QRLifetime           string           `json:"qr_lifetime"`
	IdempotencyRetention string           `json:"idempotency_retention"`
	CutoffSchedule       []string         `json:"cutoff_schedule"`
	AckDeadline          string           `json:"ack_deadline"`
	Payer                Payer            `json:"payer"`
}

func defaultFile() programmeFile {
	return programmeFile{
		TimeZone:             "Asia/Almaty",
		MRP:                  map[string]int64{"2025": 3932, "2026": 4325},
		Catalogue:            DefaultCatalogue,
		DiscountCapBP:        1500,
		Grace:                "0s",
		QRLifetime:           "120s",
		IdempotencyRetention: "48h",
		CutoffSchedule:       []string{"23:59:59"},
		AckDeadline:          "24h",
		Payer: Payer{
			Name: "Food voucher programme operator",
			BIN:  "260140001231",
			IBAN: "KZ89125KZT0000012345",
			BIC:  "NBRKKZKX",
		},
	}
}

// buildProgramme validates a programme file and resolves it.
func buildProgramme(f programmeFile) (*Programme, error) {
	p := &Programme{TimeZone: f.TimeZone, DiscountCapBP: f.DiscountCapBP, Payer: f.Payer}

	loc, err := time.LoadLocation(f.TimeZone)
	if err != nil || f.TimeZone == "" {
		return nil, fmt.Errorf("invalid time_zone %q: want an IANA zone such as \"Asia/Almaty\"", f.TimeZone)
	}
	p.Location = loc

	p.MRP = make(map[int]int64, len(f.MRP))
	for y, v := range f.MRP {
		year, err := strconv.Atoi(y)
		if err != nil || year < 2000 || year > 2999 {
			return nil, fmt.Errorf("invalid mrp year %q: want a year 2000-2999", y)
		}
		if v <= 0 || v > 1_000_000 {
			return nil, fmt.Errorf("invalid mrp for %s: %d tenge, want 1-1000000", y, v)
		}
		p.MRP[year] = v
	}

	if err := p.setCatalogue(f.Catalogue); err != nil {
		return nil, err
	}
	if f.DiscountCapBP < 0 || f.DiscountCapBP > 10_000 {
		return nil, fmt.Errorf("invalid discount_cap_bp %d: want 0-10000", f.DiscountCapBP)
	}

	durations := []struct {
		name string
		text string
		min  time.Duration
		dst  *time.Duration
	}{
		{"grace", f.Grace, 0, &p.Grace},
		{"qr_lifetime", f.QRLifetime, time.Second, &p.QRLifetime},
		{"idempotency_retention", f.IdempotencyRetention, 48 * time.Hour, &p.IdempotencyRetention},
		{"ack_deadline", f.AckDeadline, time.Minute, &p.AckDeadline},
	}
	for _, d := range durations {
		v, err := time.ParseDuration(d.text)
		if err != nil || v < d.min {
			return nil, fmt.Errorf("invalid %s %q: want a Go duration of at least %s", d.name, d.text, d.min)
		}
		*d.dst = v
	}
	if p.QRLifetime > time.Hour {
		return nil, fmt.Errorf("invalid qr_lifetime %q: at most 1h", f.QRLifetime)
	}

	if len(f.CutoffSchedule) == 0 {
		return nil, fmt.Errorf("invalid cutoff_schedule: want at least one time of day")
	}
	for _, s := range f.CutoffSchedule {
		t, err := time.Parse("15:04:05", s)
		if err != nil {
			return nil, fmt.Errorf("invalid cutoff_schedule entry %q: want HH:MM:SS", s)
		}
		p.CutoffSchedule = append(p.CutoffSchedule, t.Sub(t.Truncate(24*time.Hour)))
	}
	slices.Sort(p.CutoffSchedule)

	switch {
	case f.Payer.Name == "" || len(f.Payer.Name) > 140:
		return nil, fmt.Errorf("invalid payer.name %q: want 1-140 characters", f.Payer.Name)
	case !ValidBIN(f.Payer.BIN):
		return nil, fmt.Errorf("invalid payer.bin %q: want 12 digits with a valid check digit", f.Payer.BIN)
	case !ValidIBAN(f.Payer.IBAN):
		return nil, fmt.Errorf("invalid payer.iban %q: want a KZ IBAN of 20 characters", f.Payer.IBAN)
	case !ValidBIC(f.Payer.BIC):
		return nil, fmt.Errorf("invalid payer.bic %q: want 8 or 11 characters", f.Payer.BIC)
	}
	return p, nil
}

func (p *Programme) setCatalogue(cats []Category) error {
	if len(cats) == 0 {
		return fmt.Errorf("invalid catalogue: want at least one category")
	}
	p.catalogueIndex = make(map[string]struct{}, len(cats))
	h := sha256.New()
	for _, c := range cats {
		if !validCode(c.Code) {
			return fmt.Errorf("invalid catalogue code %q: want 1-64 of [a-z0-9_]", c.Code)
		}
		if _, dup := p.catalogueIndex[c.Code]; dup {
			return fmt.Errorf("invalid catalogue: code %q appears twice", c.Code)
		}
		if c.Name == "" {
			return fmt.Errorf("invalid catalogue entry %q: name is empty", c.Code)
		}
		p.catalogueIndex[c.Code] = struct{}{}
		fmt.Fprintf(h, "%s\x00%s\x00", c.Code, c.Name)
	}
	p.Catalogue = slices.Clone(cats)
	p.catalogueETag = hex.EncodeToString(h.Sum(nil)[:8])
	return nil
}

func validCode(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// Eligible reports whether a category code is in the catalogue.
func (p *Programme) Eligible(code string) bool {
	_, ok := p.catalogueIndex[code]
	return ok
}

// CatalogueVersion identifies the catalogue's content; it changes whenever
// a code or a name changes, so tills can cache by it.
func (p *Programme) CatalogueVersion() string { return p.catalogueETag }

// FaceValue returns the value of a voucher for a family of the given size in
// the given month, or false when the month's year has no MRP.
func (p *Programme) FaceValue(m Month, members int) (Tiyn, bool) {
	mrp, ok := p.MRP[m.Year()]
	if !ok {
		return 0, false
	}
	return Tiyn(mrp * 100 * int64(members)), true
}

// SpendUntil returns the end of spending for an active voucher of month m:
// the end of the month plus the grace period.
func (p *Programme) SpendUntil(m Month) time.Time {
	return m.End(p.Location).Add(p.Grace)
}

// NextCutoff returns the first scheduled cut-off strictly after t.
func (p *Programme) NextCutoff(t time.Time) time.Time {
	t = t.In(p.Location)
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, p.Location)
	for d := 0; d < 2; d++ {
		base := day.AddDate(0, 0, d)
		for _, off := range p.CutoffSchedule {
			// Add the offset on the wall clock, so a zone with a DST
			// change still cuts at the written time of day.
			at := time.Date(base.Year(), base.Month(), base.Day(),
				0, 0, 0, int(off), p.Location)
			if at.After(t) {
				return at
			}
		}
	}
	panic(fmt.Sprintf("BUG: no cut-off after %s in %v", t, p.CutoffSchedule))
}
