package license

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Plan is the license one Stripe price (or product) grants.
type Plan struct {
	// ProductID is the Cryptolens product of the key.
	ProductID int
	// Features maps the features this plan manages (1..8) to on or off.
	Features map[int]bool
	// Machines is the machine limit rule; nil leaves the limit alone.
	Machines *MachineRule
	// BufferDays overrides the global buffer; nil keeps it.
	BufferDays *int
	// Perpetual says the plan sells a perpetual key for a one-time payment (plans-file
	// perpetual: true): its key never expires, and it maps no subscription's item.
	Perpetual bool
	// Source says where the mapping came from, for audits and errors.
	Source string
}

// MachineRule computes a machine limit: Fixed, plus PerSeat × the item's quantity.
type MachineRule struct {
	Fixed   int
	PerSeat int
}

// Item is one subscription item, as the mapping sees it.
type Item struct {
	PriceID         string
	ProductID       string
	Quantity        int64
	PriceMetadata   map[string]string
	ProductMetadata map[string]string
	// Metered is true for a metered price (recurring.usage_type=metered).
	Metered bool
	// OneTime is true for a price of type one_time: it sells a perpetual key.
	OneTime bool
}

// Mapping resolves Stripe prices to plans. Precedence, most specific first:
//  1. a plans-file entry for the price id;
//  2. a plans-file entry for the product id;
//  3. price metadata "skm" (Cryptolens' hosted-module format), with the Cryptolens
//     product from its "ProductId", else product metadata "skm_product_id", else the
//     default product id;
//  4. product metadata "skm_product_id" alone (a key, no managed features);
//  5. the plans file's catch-all entry ("default: true"), if there is one.
//
// Anything else is unmapped: it needs no license.
type Mapping struct {
	byPrice   map[string]Plan
	byProduct map[string]Plan
	catchAll  *Plan
	// DefaultProductID is the Cryptolens product for entries that name none
	// (CRYPTOLENS_PRODUCT_ID). It maps nothing by itself.
	DefaultProductID int
	// managed lists, per Cryptolens product, every feature any plans-file entry names:
	// moving between plans turns off what the new plan lacks.
	managed map[int]map[int]bool
	// timeLimited is the feature no subscription plan may turn off (0: none).
	timeLimited int
}

// RequireTimeLimited makes feature (1..8) the one that marks a key as time-limited: no
// subscription plan may turn it off (Cryptolens enforces expiry only on keys whose
// time-limited feature is on, so a subscription key without it never expires), and no
// perpetual plan may turn it on (the key of a one-time purchase must never expire).
// Plans-file features of an ordinary entry are lists of features turned on, so such an
// entry cannot turn it off (Desire turns it on whatever the entry lists); "skm" metadata
// can, and Resolve refuses it. 0 requires nothing. It returns an error for a feature
// outside 0..8, and for a perpetual plans-file entry that lists the feature.
func (m *Mapping) RequireTimeLimited(feature int) error {
	if feature < 0 || feature > 8 {
		return fmt.Errorf("time-limited feature %d: want 0 (none) or 1..8", feature)
	}
	plans := slices.Collect(maps.Values(m.byPrice))
	plans = append(plans, slices.Collect(maps.Values(m.byProduct))...)
	if m.catchAll != nil {
		plans = append(plans, *m.catchAll)
	}
	slices.SortFunc(plans, func(a, b Plan) int { return strings.Compare(a.Source, b.Source) })
	for _, p := range plans {
		if p.Perpetual && p.Features[feature] {
			return fmt.Errorf("%s: a perpetual plan lists F%d, the time-limited feature: the key of a one-time purchase has it off", p.Source, feature)
		}
	}
	m.timeLimited = feature
	return nil
}

// NewMapping returns a Mapping with no plans-file entries. A default product id of 0
// or less means none.
func NewMapping(defaultProductID int) *Mapping {
	return &Mapping{byPrice: map[string]Plan{}, byProduct: map[string]Plan{}, DefaultProductID: max(defaultProductID, 0),
		managed: map[int]map[int]bool{}}
}

// Resolve returns the plan of item, and false when the item is unmapped. It returns an
// error for metadata that says it maps the item but cannot be read (a malformed "skm").
func (m *Mapping) Resolve(it Item) (Plan, bool, error) {
	if p, ok := m.byPrice[it.PriceID]; ok {
		return m.withManaged(p), true, nil
	}
	if p, ok := m.byProduct[it.ProductID]; ok {
		return m.withManaged(p), true, nil
	}
	productFromMeta := 0
	if v := it.ProductMetadata["skm_product_id"]; v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n <= 0 {
			return Plan{}, false, fmt.Errorf("product %s: metadata skm_product_id %q is not a Cryptolens product id", it.ProductID, v)
		}
		productFromMeta = n
	}
	if raw := it.PriceMetadata["skm"]; raw != "" {
		p, err := parseSKM(raw, firstNonZero(productFromMeta, m.DefaultProductID))
		if err != nil {
			return Plan{}, false, fmt.Errorf("price %s: metadata skm: %w", it.PriceID, err)
		}
		p.Source = "price " + it.PriceID + " metadata skm"
		if f := m.timeLimited; f > 0 {
			on, named := p.Features[f]
			switch {
			case named && !on && !it.OneTime:
				return Plan{}, false, fmt.Errorf("price %s: metadata skm turns off F%d, the time-limited feature: a subscription key without it never expires", it.PriceID, f)
			case on && it.OneTime:
				return Plan{}, false, fmt.Errorf("price %s: metadata skm turns on F%d, the time-limited feature: the key of a one-time purchase is perpetual", it.PriceID, f)
			}
		}
		return p, true, nil
	}
	if productFromMeta != 0 {
		return Plan{ProductID: productFromMeta, Features: map[int]bool{}, Source: "product " + it.ProductID + " metadata skm_product_id"}, true, nil
	}
	if m.catchAll != nil {
		return m.withManaged(*m.catchAll), true, nil
	}
	return Plan{}, false, nil
}

// withManaged adds, turned off, every feature of the product that some other plan
// turns on, so that leaving that plan removes them.
func (m *Mapping) withManaged(p Plan) Plan {
	out := p
	out.Features = make(map[int]bool, len(p.Features))
	for f := range m.managed[p.ProductID] {
		out.Features[f] = false
	}
	for f, on := range p.Features {
		out.Features[f] = on
	}
	return out
}

func firstNonZero(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// parseSKM reads the hosted module's price metadata: a JSON object of CreateKey
// parameters such as {"F3":true,"MaxNoOfMachines":1,"ProductId":123}. The features it
// names (true or false) are the ones it manages; MaxNoOfMachines is a fixed limit.
func parseSKM(raw string, defaultProduct int) (Plan, error) {
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&fields); err != nil {
		return Plan{}, fmt.Errorf("not a JSON object: %v", err)
	}
	p := Plan{ProductID: defaultProduct, Features: map[int]bool{}}
	for k, v := range fields {
		key := strings.ToLower(k)
		switch {
		case len(key) == 2 && key[0] == 'f' && key[1] >= '1' && key[1] <= '8':
			var on bool
			if err := json.Unmarshal(v, &on); err != nil {
				return Plan{}, fmt.Errorf("%s must be true or false", k)
			}
			p.Features[int(key[1]-'0')] = on
		case key == "maxnoofmachines":
			var n int
			if err := json.Unmarshal(v, &n); err != nil || n < 0 {
				return Plan{}, fmt.Errorf("MaxNoOfMachines must be a whole number, 0 or more")
			}
			p.Machines = &MachineRule{Fixed: n}
		case key == "productid":
			var n int
			if err := json.Unmarshal(v, &n); err != nil || n <= 0 {
				return Plan{}, fmt.Errorf("ProductId must be a Cryptolens product id")
			}
			p.ProductID = n
		default:
			// Other CreateKey parameters (Notes, Period, ...) mean nothing to a sync.
		}
	}
	if p.ProductID == 0 {
		return Plan{}, fmt.Errorf("no Cryptolens product: set ProductId, product metadata skm_product_id, or CRYPTOLENS_PRODUCT_ID")
	}
	return p, nil
}

// ParsePlans reads a plans file (YAML). Every error names the file and line:
//
//	plans:
//	  - price: price_123          # or product: prod_123, or default: true (one catch-all)
//	    cryptolens_product: 1001  # optional: CRYPTOLENS_PRODUCT_ID otherwise
//	    features: [1, 3]          # F1 and F3 on; features other plans of the product turn on are turned off
//	    machines: 2               # a fixed machine limit, and/or
//	    machines_per_seat: 1      # this many machines per unit of quantity
//	    buffer_days: 7            # overrides KEYSYNC_BUFFER_DAYS for this plan
//	    perpetual: true           # a one-time price's perpetual key (no expiry, no buffer)
func ParsePlans(name string, data []byte, defaultProductID int) (*Mapping, error) {
	m := NewMapping(defaultProductID)
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if len(doc.Content) == 0 {
		return m, nil
	}
	root := doc.Content[0]
	at := func(n *yaml.Node, format string, a ...any) error {
		return fmt.Errorf("%s:%d: %s", name, n.Line, fmt.Sprintf(format, a...))
	}
	if root.Kind != yaml.MappingNode {
		return nil, at(root, "the file must be a mapping with a plans: list")
	}
	var plans *yaml.Node
	for i := 0; i < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Value != "plans" {
			return nil, at(k, "unknown key %q (the file has one key, plans)", k.Value)
		}
		plans = v
	}
	if plans == nil {
		return m, nil
	}
	if plans.Kind != yaml.SequenceNode {
		return nil, at(plans, "plans must be a list of entries")
	}
	seen := map[string]int{}
	for _, entry := range plans.Content {
		if entry.Kind != yaml.MappingNode {
			return nil, at(entry, "each plan must be a mapping (price:, product: or default:, and its settings)")
		}
		var p Plan
		var price, product string
		var isDefault bool
		p.Features = map[int]bool{}
		for i := 0; i < len(entry.Content); i += 2 {
			k, v := entry.Content[i], entry.Content[i+1]
			switch k.Value {
			case "price":
				if !strings.HasPrefix(v.Value, "price_") && !strings.HasPrefix(v.Value, "plan_") {
					return nil, at(v, "price %q is not a Stripe price id (price_...)", v.Value)
				}
				price = v.Value
			case "product":
				if !strings.HasPrefix(v.Value, "prod_") {
					return nil, at(v, "product %q is not a Stripe product id (prod_...)", v.Value)
				}
				product = v.Value
			case "default":
				if err := v.Decode(&isDefault); err != nil {
					return nil, at(v, "default must be true or false")
				}
			case "cryptolens_product":
				if err := v.Decode(&p.ProductID); err != nil || p.ProductID <= 0 {
					return nil, at(v, "cryptolens_product must be a Cryptolens product id (a positive number)")
				}
			case "features":
				var fs []int
				if err := v.Decode(&fs); err != nil {
					return nil, at(v, "features must be a list of feature numbers, like [1, 3]")
				}
				for _, f := range fs {
					if f < 1 || f > 8 {
						return nil, at(v, "feature %d does not exist: Cryptolens has features 1 to 8", f)
					}
					p.Features[f] = true
				}
			case "machines", "machines_per_seat":
				var n int
				if err := v.Decode(&n); err != nil || n < 0 {
					return nil, at(v, "%s must be a whole number, 0 or more", k.Value)
				}
				if p.Machines == nil {
					p.Machines = &MachineRule{}
				}
				if k.Value == "machines" {
					p.Machines.Fixed = n
				} else {
					p.Machines.PerSeat = n
				}
			case "buffer_days":
				var n int
				if err := v.Decode(&n); err != nil || n < 0 || n > 365 {
					return nil, at(v, "buffer_days must be a whole number from 0 to 365")
				}
				p.BufferDays = &n
			case "perpetual":
				if err := v.Decode(&p.Perpetual); err != nil {
					return nil, at(v, "perpetual must be true or false")
				}
			default:
				return nil, at(k, "unknown setting %q (price, product, default, cryptolens_product, features, machines, machines_per_seat, buffer_days, perpetual)", k.Value)
			}
		}
		if p.Perpetual && p.BufferDays != nil {
			return nil, at(entry, "a perpetual plan never expires: buffer_days means nothing to it")
		}
		keys := 0
		for _, set := range []bool{price != "", product != "", isDefault} {
			if set {
				keys++
			}
		}
		if keys != 1 {
			return nil, at(entry, "a plan names exactly one of price:, product: or default: true")
		}
		if p.ProductID == 0 {
			p.ProductID = m.DefaultProductID
		}
		if p.ProductID == 0 {
			return nil, at(entry, "no Cryptolens product: set cryptolens_product or CRYPTOLENS_PRODUCT_ID")
		}
		id := price + product
		if isDefault {
			id = "default"
		}
		if line, dup := seen[id]; dup {
			return nil, at(entry, "%s is mapped twice (first on line %d)", id, line)
		}
		seen[id] = entry.Line
		p.Source = fmt.Sprintf("%s:%d", name, entry.Line)
		switch {
		case price != "":
			m.byPrice[price] = p
		case product != "":
			m.byProduct[product] = p
		default:
			cp := p
			m.catchAll = &cp
		}
		if m.managed[p.ProductID] == nil {
			m.managed[p.ProductID] = map[int]bool{}
		}
		for f := range p.Features {
			m.managed[p.ProductID][f] = true
		}
	}
	return m, nil
}

// Entries returns how many plans-file entries the mapping holds (for the start-up log).
func (m *Mapping) Entries() int {
	n := len(m.byPrice) + len(m.byProduct)
	if m.catchAll != nil {
		n++
	}
	return n
}

// Products returns the Cryptolens products the plans file and the default product name.
func (m *Mapping) Products() []int {
	set := map[int]bool{}
	for _, p := range m.byPrice {
		set[p.ProductID] = true
	}
	for _, p := range m.byProduct {
		set[p.ProductID] = true
	}
	if m.catchAll != nil {
		set[m.catchAll.ProductID] = true
	}
	if m.DefaultProductID != 0 {
		set[m.DefaultProductID] = true
	}
	out := make([]int, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}
