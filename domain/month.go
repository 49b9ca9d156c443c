package domain

import (
	"fmt"
	"time"
)

// Month is a calendar month, counted as year×12 + (month−1). Its boundaries
// are always taken in the programme's time zone: a voucher of 2026-12 may be
// activated from 2026-12-01T00:00 to 2027-01-01T00:00 Asia/Almaty.
type Month int32

// MakeMonth returns the month of the given year and calendar month (1–12).
func MakeMonth(year int, m time.Month) Month {
	return Month(year*12 + int(m) - 1)
}

// MonthOf returns the month that t falls in, seen from loc.
func MonthOf(t time.Time, loc *time.Location) Month {
	t = t.In(loc)
	return MakeMonth(t.Year(), t.Month())
}

// ParseMonth parses "YYYY-MM" with a year between 2000 and 2999.
func ParseMonth(s string) (Month, error) {
	if len(s) != 7 || s[4] != '-' {
		return 0, fmt.Errorf("cannot parse month %q: want YYYY-MM", s)
	}
	year, mon := 0, 0
	for i, c := range []byte(s) {
		if i == 4 {
			continue
		}
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("cannot parse month %q: want YYYY-MM", s)
		}
		if i < 4 {
			year = year*10 + int(c-'0')
		} else {
			mon = mon*10 + int(c-'0')
		}
	}
	if year < 2000 || year > 2999 || mon < 1 || mon > 12 {
		return 0, fmt.Errorf("cannot parse month %q: year 2000-2999, month 01-12", s)
	}
	return MakeMonth(year, time.Month(mon)), nil
}

// Year returns the calendar year of m.
func (m Month) Year() int { return int(m) / 12 }

// Calendar returns the calendar month of m (January is 1).
func (m Month) Calendar() time.Month { return time.Month(int(m)%12 + 1) }

// Next returns the month after m.
func (m Month) Next() Month { return m + 1 }

// Start returns the first instant of m in loc.
func (m Month) Start(loc *time.Location) time.Time {
	return time.Date(m.Year(), m.Calendar(), 1, 0, 0, 0, 0, loc)
}

// End returns the first instant after m in loc, which is the start of the
// next month.
func (m Month) End(loc *time.Location) time.Time { return m.Next().Start(loc) }

// String formats m as "YYYY-MM".
func (m Month) String() string {
	return fmt.Sprintf("%04d-%02d", m.Year(), int(m.Calendar()))
}
