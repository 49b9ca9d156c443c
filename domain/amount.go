package domain

import (
	"errors"
	"fmt"
	"math/bits"
)

// Tiyn is an amount of money in tiyn, the hundredth part of a tenge. Every
// amount in azyq is a Tiyn; floats never carry money.
type Tiyn int64

// AmountMax is the largest amount the API accepts in any single field
// (10^15 tiyn, ten trillion tenge). Sums of many amounts may exceed it; they
// are still checked for int64 overflow.
const AmountMax Tiyn = 1_000_000_000_000_000

// ErrOverflow reports a sum or product that does not fit in an int64. Money
// arithmetic never wraps.
var ErrOverflow = errors.New("amount overflows int64")

// Add returns a+b, or ErrOverflow when the sum does not fit.
func (a Tiyn) Add(b Tiyn) (Tiyn, error) {
	s := a + b
	// Overflow happened iff both operands have the sign opposite to the sum.
	if (a >= 0) == (b >= 0) && (s >= 0) != (a >= 0) {
		return 0, fmt.Errorf("cannot add %d and %d: %w", a, b, ErrOverflow)
	}
	return s, nil
}

// Sub returns a-b, or ErrOverflow when the difference does not fit.
func (a Tiyn) Sub(b Tiyn) (Tiyn, error) {
	d := a - b
	if (a >= 0) != (b >= 0) && (d >= 0) != (a >= 0) {
		return 0, fmt.Errorf("cannot subtract %d from %d: %w", b, a, ErrOverflow)
	}
	return d, nil
}

// MulInt returns a*n for a non-negative amount and factor, or ErrOverflow.
func (a Tiyn) MulInt(n int64) (Tiyn, error) {
	if a < 0 || n < 0 {
		return 0, fmt.Errorf("cannot multiply %d by %d: negative operand", a, n)
	}
	hi, lo := bits.Mul64(uint64(a), uint64(n))
	if hi != 0 || lo > 1<<63-1 {
		return 0, fmt.Errorf("cannot multiply %d by %d: %w", a, n, ErrOverflow)
	}
	return Tiyn(lo), nil
}

// Discount returns floor(a × bp / 10000) for a non-negative amount and a
// discount in basis points between 0 and 10000. The product is computed in
// 128 bits, so it is exact for every int64 amount.
func (a Tiyn) Discount(bp int64) Tiyn {
	if a < 0 || bp < 0 || bp > 10_000 {
		panic(fmt.Sprintf("BUG: discount of %d at %d bp", a, bp))
	}
	hi, lo := bits.Mul64(uint64(a), uint64(bp))
	q, _ := bits.Div64(hi, lo, 10_000)
	return Tiyn(q)
}

// ValidAmount reports whether a is an amount the API accepts: 0..AmountMax.
func ValidAmount(a int64) bool { return a >= 0 && a <= int64(AmountMax) }
