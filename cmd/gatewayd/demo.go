package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"azyq/domain"
	"azyq/gateway"
	"azyq/ledger"
)

// The demo's shop, terminal and families.
const (
	demoStore    = "demo-shop"
	demoTerminal = "demo-till-1"
	demoFamilies = 5
)

func demoFamily(i int) string { return fmt.Sprintf("DEMO-%04d", i+1) }

// seedDemo seeds a shop, a terminal and a few active vouchers of the
// current month on an empty ledger, and records the terminal's key in the
// secrets file so a later --demo can print it again. On a ledger that
// holds anything already it seeds nothing and returns what was recorded
// (nil when the data directory was not seeded by --demo).
func seedDemo(led *ledger.Ledger, secrets *gateway.Secrets, dir string, log *slog.Logger) (*gateway.Demo, error) {
	if len(led.Stores()) > 0 || led.Books().VoucherCount > 0 {
		return secrets.Demo, nil
	}
	prog := led.Programme()
	month := domain.MonthOf(led.Now(), prog.Location)
	if _, ok := prog.FaceValue(month, 1); !ok {
		return nil, fmt.Errorf("cannot seed the demo: no MRP is configured for %d; give one in the programme file (--program), e.g. {\"mrp\": {\"%d\": 4600}}",
			month.Year(), month.Year())
	}

	bin, _ := domain.BINWithCheck("26014000777")
	if bin == "" {
		bin, _ = domain.BINWithCheck("26014000778")
	}
	store := ledger.Store{
		ID: demoStore, Name: "Demo grocery", BIN: bin, City: "Pavlodar", BankBIC: "HSBKKZKX",
		IBAN: domain.IBANWithCheck("601", "A000000012345"), DiscountBP: 1000,
	}
	if _, err := led.PutStore(store); err != nil {
		return nil, fmt.Errorf("cannot seed the demo shop: %w", err)
	}
	key, err := gateway.NewTerminalKey()
	if err != nil {
		return nil, err
	}
	if _, err := led.AddTerminal(demoStore, demoTerminal, sha256.Sum256([]byte(key))); err != nil {
		return nil, fmt.Errorf("cannot seed the demo terminal: %w", err)
	}
	families := make([]ledger.Family, demoFamilies)
	for i := range families {
		families[i] = ledger.Family{FamilyID: demoFamily(i), Members: i + 1, City: "Pavlodar"}
	}
	issued, err := led.Issue(month, families)
	if err != nil {
		return nil, fmt.Errorf("cannot seed the demo vouchers: %w", err)
	}
	for _, is := range issued {
		if _, err := led.Activate(is.Voucher.ID); err != nil {
			return nil, fmt.Errorf("cannot activate demo voucher %s: %w", is.Voucher.ID, err)
		}
	}

	secrets.Demo = &gateway.Demo{StoreID: demoStore, TerminalID: demoTerminal, TerminalKey: key}
	if err := secrets.Save(dir); err != nil {
		return nil, err
	}
	log.Info("demo seeded", "store", demoStore, "terminal", demoTerminal, "vouchers", len(issued), "month", month.String())
	return secrets.Demo, nil
}

// demoVouchers returns the demo families' vouchers of the current month,
// or of the month they were seeded in.
func demoVouchers(led *ledger.Ledger) []ledger.Voucher {
	m := domain.MonthOf(led.Now(), led.Programme().Location)
	for _, month := range []domain.Month{m, m - 1, m - 2} {
		var out []ledger.Voucher
		for i := range demoFamilies {
			if v, err := led.VoucherByFamily(month, demoFamily(i)); err == nil {
				out = append(out, v)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// printDemo prints the credentials and curl commands that mint a QR token
// and redeem it; they work pasted as they are into bash.
func printDemo(w io.Writer, led *ledger.Ledger, demo *gateway.Demo, t roleTokens, addr string) {
	base := "http://" + addr
	var b strings.Builder
	fmt.Fprintf(&b, "azyq demo on %s\n\n", base)
	fmt.Fprintf(&b, "  admin token:      %s\n", t.admin)
	fmt.Fprintf(&b, "  wallet token:     %s\n", t.wallet)
	if demo == nil {
		fmt.Fprintf(&b, "\nThis data directory was not seeded by --demo, so there is no demo terminal;\n"+
			"start with an empty --data directory to get one.\n")
		io.WriteString(w, b.String())
		return
	}
	fmt.Fprintf(&b, "  terminal key:     %s  (terminal %s of shop %s)\n", demo.TerminalKey, demo.TerminalID, demo.StoreID)
	vs := demoVouchers(led)
	active := ""
	for _, v := range vs {
		fmt.Fprintf(&b, "  voucher:          %s  family %s, %d members, balance %d of %d tiyn, %s\n",
			v.ID, v.FamilyID, v.Members, v.Balance, v.FaceValue, v.Status)
		if active == "" && v.Status == ledger.StatusActive && v.Balance >= 150_000 {
			active = v.ID.String()
		}
	}
	if active == "" {
		fmt.Fprintf(&b, "\nNo demo voucher can pay 150000 tiyn any more; start with an empty --data directory.\n")
		io.WriteString(w, b.String())
		return
	}
	fmt.Fprintf(&b, "\nMint a QR token as the wallet app does, then redeem 1500 tenge with it as a till does:\n\n")
	fmt.Fprintf(&b, "QR=$(curl -sS -X POST -H 'Authorization: Bearer %s' %s/v1/vouchers/%s/qr | sed -E 's/.*\"qr\":\"([^\"]*)\".*/\\1/')\n",
		t.wallet, base, active)
	fmt.Fprintf(&b, "curl -sS -X POST -H 'Authorization: Bearer %s' -H \"Idempotency-Key: demo-$RANDOM$RANDOM\" -H 'Content-Type: application/json' -d \"{\\\"qr\\\":\\\"$QR\\\",\\\"amount\\\":150000}\" %s/v1/redemptions; echo\n",
		demo.TerminalKey, base)
	fmt.Fprintf(&b, "curl -sS -H 'Authorization: Bearer %s' %s/v1/vouchers/%s; echo\n\n", t.wallet, base, active)
	io.WriteString(w, b.String())
}
