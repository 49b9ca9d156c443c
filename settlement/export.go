package settlement

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"strconv"
	"time"

	"azyq/domain"
	"azyq/ledger"
)

// PainNamespace is the XML namespace of the payment files.
const PainNamespace = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"

// endToEndIDMax is the length limit of an ISO 20022 Max35Text.
const endToEndIDMax = 35

// Document is a pain.001.001.09 customer credit transfer initiation, with
// the elements azyq fills in.
type Document struct {
	XMLName xml.Name               `xml:"urn:iso:std:iso:20022:tech:xsd:pain.001.001.09 Document"`
	Init    CustomerCreditTransfer `xml:"CstmrCdtTrfInitn"`
}

// CustomerCreditTransfer is the message: a group header and the payment
// information block of the programme's account.
type CustomerCreditTransfer struct {
	GroupHeader GroupHeader   `xml:"GrpHdr"`
	Payments    []PaymentInfo `xml:"PmtInf"`
}

// GroupHeader identifies the message and totals it.
type GroupHeader struct {
	MsgID            string `xml:"MsgId"`
	CreationDateTime string `xml:"CreDtTm"`
	NumberOfTxs      int    `xml:"NbOfTxs"`
	ControlSum       string `xml:"CtrlSum"`
	InitiatingParty  Party  `xml:"InitgPty"`
}

// Party is a name and an organisation id (the BIN).
type Party struct {
	Name string   `xml:"Nm"`
	ID   *PartyID `xml:"Id,omitempty"`
}

// PartyID carries an organisation's identifier.
type PartyID struct {
	OrgID OrgID `xml:"OrgId"`
}

// OrgID holds one other identifier with its scheme.
type OrgID struct {
	Other GenericID `xml:"Othr"`
}

// GenericID is an identifier and the code of its scheme ("TXID": the BIN,
// which is the tax identification number of a Kazakh organisation).
type GenericID struct {
	ID         string     `xml:"Id"`
	SchemeName SchemeName `xml:"SchmeNm"`
}

// SchemeName names an identification scheme by code.
type SchemeName struct {
	Code string `xml:"Cd"`
}

// PaymentInfo is the debit side: the programme's account and its
// transfers.
type PaymentInfo struct {
	PmtInfID      string           `xml:"PmtInfId"`
	PaymentMethod string           `xml:"PmtMtd"`
	NumberOfTxs   int              `xml:"NbOfTxs"`
	ControlSum    string           `xml:"CtrlSum"`
	ExecutionDate ExecutionDate    `xml:"ReqdExctnDt"`
	Debtor        Party            `xml:"Dbtr"`
	DebtorAccount Account          `xml:"DbtrAcct"`
	DebtorAgent   Agent            `xml:"DbtrAgt"`
	ChargeBearer  string           `xml:"ChrgBr"`
	Transfers     []CreditTransfer `xml:"CdtTrfTxInf"`
}

// ExecutionDate is the requested execution date.
type ExecutionDate struct {
	Date string `xml:"Dt"`
}

// Account is identified by its IBAN.
type Account struct {
	IBAN string `xml:"Id>IBAN"`
}

// Agent is a bank, identified by its BIC.
type Agent struct {
	BIC string `xml:"FinInstnId>BICFI"`
}

// CreditTransfer pays one shop.
type CreditTransfer struct {
	EndToEndID      string  `xml:"PmtId>EndToEndId"`
	Amount          Amount  `xml:"Amt>InstdAmt"`
	CreditorAgent   Agent   `xml:"CdtrAgt"`
	Creditor        Party   `xml:"Cdtr"`
	CreditorAccount Account `xml:"CdtrAcct"`
	Remittance      string  `xml:"RmtInf>Ustrd"`
}

// Amount is an instructed amount with its currency.
type Amount struct {
	Currency string `xml:"Ccy,attr"`
	Value    string `xml:",chardata"`
}

// FormatKZT writes an amount in tiyn as tenge with two decimals
// ("1234.56"), with integer arithmetic only.
func FormatKZT(t domain.Tiyn) string {
	sign := ""
	u := uint64(t)
	if t < 0 {
		sign, u = "-", uint64(-t)
	}
	frac := u % 100
	return sign + strconv.FormatUint(u/100, 10) + "." + string([]byte{byte('0' + frac/10), byte('0' + frac%10)})
}

// ParseKZT reads an amount written by FormatKZT back into tiyn.
func ParseKZT(s string) (domain.Tiyn, error) {
	if len(s) < 4 || s[len(s)-3] != '.' {
		return 0, fmt.Errorf("cannot parse amount %q: want tenge with two decimals", s)
	}
	whole, err1 := strconv.ParseInt(s[:len(s)-3], 10, 64)
	frac, err2 := strconv.ParseUint(s[len(s)-2:], 10, 8)
	if err1 != nil || err2 != nil || whole < 0 || whole > int64(domain.AmountMax) {
		return 0, fmt.Errorf("cannot parse amount %q: want tenge with two decimals", s)
	}
	return domain.Tiyn(whole*100 + int64(frac)), nil
}

// EndToEndID derives the end-to-end id of a shop's transfer in a batch:
// "<batch>-<store>" when it fits in 35 characters, otherwise the batch, a
// prefix of the store id and a hash of the whole store id, joined by a dot
// (a character store ids never contain, so the two forms cannot collide).
func EndToEndID(batchID, storeID string) string {
	if id := batchID + "-" + storeID; len(id) <= endToEndIDMax {
		return id
	}
	sum := sha256.Sum256([]byte(storeID))
	hash := hex.EncodeToString(sum[:4])
	keep := endToEndIDMax - len(batchID) - 2 - len(hash)
	return batchID + "-" + storeID[:keep] + "." + hash
}

// PaymentDocument builds the pain.001 message of a batch read with its
// detail: the programme's account pays every shop with paid > 0. Everything
// in it derives from the batch, so it is the same on every download. A
// batch that pays no shop (every net carried) has a group header with no
// transactions and no payment information block.
func PaymentDocument(p *domain.Programme, b *Batch) *Document {
	created := b.PeriodEnd.In(p.Location)
	doc := &Document{Init: CustomerCreditTransfer{GroupHeader: GroupHeader{
		MsgID:            b.ID,
		CreationDateTime: created.Format(time.RFC3339),
		ControlSum:       FormatKZT(b.Net),
		InitiatingParty:  organisation(p.Payer.Name, p.Payer.BIN),
	}}}
	pay := PaymentInfo{
		PmtInfID: b.ID, PaymentMethod: "TRF", ControlSum: FormatKZT(b.Net),
		ExecutionDate: ExecutionDate{Date: created.Format(time.DateOnly)},
		Debtor:        organisation(p.Payer.Name, p.Payer.BIN),
		DebtorAccount: Account{IBAN: p.Payer.IBAN},
		DebtorAgent:   Agent{BIC: p.Payer.BIC},
		ChargeBearer:  "SLEV",
	}
	for _, st := range b.Stores {
		if st.Paid <= 0 {
			continue
		}
		pay.Transfers = append(pay.Transfers, CreditTransfer{
			EndToEndID:      EndToEndID(b.ID, st.StoreID),
			Amount:          Amount{Currency: "KZT", Value: FormatKZT(st.Paid)},
			CreditorAgent:   Agent{BIC: b.BankBIC},
			Creditor:        organisation(st.Name, st.BIN),
			CreditorAccount: Account{IBAN: st.IBAN},
			Remittance:      "azyq settlement " + b.ID + " store " + st.StoreID,
		})
	}
	pay.NumberOfTxs = len(pay.Transfers)
	doc.Init.GroupHeader.NumberOfTxs = pay.NumberOfTxs
	if pay.NumberOfTxs > 0 {
		doc.Init.Payments = []PaymentInfo{pay}
	}
	return doc
}

func organisation(name, bin string) Party {
	return Party{Name: name, ID: &PartyID{OrgID: OrgID{Other: GenericID{ID: bin, SchemeName: SchemeName{Code: "TXID"}}}}}
}

// WritePayments writes a batch's pain.001 document, indented, with the XML
// declaration.
func WritePayments(w io.Writer, p *domain.Programme, b *Batch) error {
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(PaymentDocument(p, b)); err != nil {
		return fmt.Errorf("cannot write payments of batch %s: %w", b.ID, err)
	}
	_, err := io.WriteString(w, "\n")
	return err
}

// LinesHeader is the header row of lines.csv.
const LinesHeader = "kind,id,redemption_id,store_id,terminal_id,voucher_id,amount,created_at\n"

// WriteLines streams a batch's lines.csv: a header row, then one row per
// redemption and refund of the batch's shops in the batch's periods, in
// sequence order. Rows are written as the ledger's journal is read, so a
// batch of millions of lines never sits in memory whole. Every field is an
// id, a number or a time, none of which needs CSV quoting.
func (s *Settlement) WriteLines(w io.Writer, b *Batch) error {
	stores := make(map[string]struct{}, len(b.Stores))
	for _, st := range b.Stores {
		stores[st.StoreID] = struct{}{}
	}
	bw, ok := w.(*bufio.Writer)
	if !ok {
		bw = bufio.NewWriterSize(w, 64<<10)
	}
	if _, err := bw.WriteString(LinesHeader); err != nil {
		return err
	}
	var row []byte
	err := s.l.Movements(b.FromPeriod, b.ToPeriod, func(m *ledger.Movement) error {
		if _, ok := stores[m.StoreID]; !ok {
			return nil
		}
		row = appendLine(row[:0], m)
		_, err := bw.Write(row)
		return err
	})
	if err != nil {
		return fmt.Errorf("cannot write lines of batch %s: %w", b.ID, err)
	}
	return bw.Flush()
}

func appendLine(row []byte, m *ledger.Movement) []byte {
	row = append(row, m.Kind.String()...)
	row = append(row, ',')
	if m.Kind == ledger.KindRedemption {
		row = ledger.AppendRedemptionID(row, m.Seq)
	} else {
		row = append(row, ledger.RefundID(m.Seq)...)
	}
	row = append(row, ',')
	row = ledger.AppendRedemptionID(row, m.Redemption)
	row = append(row, ',')
	row = append(row, m.StoreID...)
	row = append(row, ',')
	row = append(row, m.TerminalID...)
	row = append(row, ',')
	row = m.Voucher.AppendText(row)
	row = append(row, ',')
	row = strconv.AppendInt(row, int64(m.Amount), 10)
	row = append(row, ',')
	row = m.CreatedAt.AppendFormat(row, time.RFC3339) // as the API writes created_at
	return append(row, '\n')
}
