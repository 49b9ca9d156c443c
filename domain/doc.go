// Package domain holds the vocabulary every other package of azyq shares:
// amounts in tiyn, calendar months in the programme's time zone, the
// programme's policy (MRP by year, catalogue, limits, schedules) and the
// validation of Kazakh identifiers (BIN, IBAN, BIC).
//
// It is a leaf: it imports nothing from the project, so the ledger, the
// settlement and the gateway can all speak in its terms without cycles.
package domain
