package domain

import (
	"fmt"
	"math/big"
)

// ValidBIN reports whether s is a Kazakh BIN (or IIN): 12 digits whose last
// one is the mod-11 check digit. The first pass weighs the first eleven
// digits 1..11; if it gives 10, a second pass weighs them 3..11,1,2; a
// result of 10 again means the number is not valid.
func ValidBIN(s string) bool {
	if len(s) != 12 {
		return false
	}
	var d [12]int
	for i := range 12 {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
		d[i] = int(s[i] - '0')
	}
	check := func(first int) int {
		sum := 0
		for i := range 11 {
			w := (first+i-1)%11 + 1
			sum += d[i] * w
		}
		return sum % 11
	}
	c := check(1)
	if c == 10 {
		c = check(3)
	}
	return c != 10 && c == d[11]
}

// ValidIBAN reports whether s is a Kazakh IBAN: "KZ", two check digits, a
// three-digit bank code and thirteen alphanumeric characters, 20 in all,
// upper case, with a valid ISO 13616 MOD-97 checksum.
func ValidIBAN(s string) bool {
	if len(s) != 20 || s[0] != 'K' || s[1] != 'Z' {
		return false
	}
	for i := 2; i < 20; i++ {
		c := s[i]
		digit := c >= '0' && c <= '9'
		if i < 7 && !digit {
			return false
		}
		if !digit && (c < 'A' || c > 'Z') {
			return false
		}
	}
	return mod97(s[4:]+s[:4]) == 1
}

// mod97 computes the ISO 7064 MOD 97-10 remainder of an alphanumeric string,
// letters counting as 10..35.
func mod97(s string) int {
	r := 0
	for i := range len(s) {
		c := s[i]
		if c >= 'A' {
			v := int(c-'A') + 10
			r = (r*100 + v) % 97
		} else {
			r = (r*10 + int(c-'0')) % 97
		}
	}
	return r
}

// ValidBIC reports whether s is a SWIFT BIC: 4 letters of bank code, 2
// letters of country, 2 alphanumerics of location, and optionally 3
// alphanumerics of branch; 8 or 11 characters, upper case.
func ValidBIC(s string) bool {
	if len(s) != 8 && len(s) != 11 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		letter := c >= 'A' && c <= 'Z'
		digit := c >= '0' && c <= '9'
		if i < 6 && !letter || i >= 6 && !letter && !digit {
			return false
		}
	}
	return true
}

// IBANWithCheck returns a Kazakh IBAN built from a three-digit bank code and
// a thirteen-character account, with its check digits computed. Demo data and
// tests use it to make valid numbers.
func IBANWithCheck(bank, account string) string {
	if len(bank) != 3 || len(account) != 13 {
		panic(fmt.Sprintf("BUG: IBAN parts %q %q", bank, account))
	}
	rest := bank + account + "KZ00"
	n := new(big.Int)
	for i := range len(rest) {
		c := rest[i]
		if c >= 'A' {
			n.Mul(n, big.NewInt(100)).Add(n, big.NewInt(int64(c-'A')+10))
		} else {
			n.Mul(n, big.NewInt(10)).Add(n, big.NewInt(int64(c-'0')))
		}
	}
	check := 98 - new(big.Int).Mod(n, big.NewInt(97)).Int64()
	return fmt.Sprintf("KZ%02d%s%s", check, bank, account)
}

// BINWithCheck returns a BIN made of eleven digits and their check digit,
// or false when no check digit exists for them.
func BINWithCheck(first11 string) (string, bool) {
	for c := byte('0'); c <= '9'; c++ {
		if s := first11 + string(c); ValidBIN(s) {
			return s, true
		}
	}
	return "", false
}
