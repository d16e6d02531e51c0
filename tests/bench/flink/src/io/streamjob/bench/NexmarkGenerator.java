package io.streamjob.bench;

/**
 * An exact Java port of our deterministic Nexmark generator (crates/engine/src/connectors/nexmark.rs):
 * event {@code i} is a pure function of {@code i} and the configuration. Rust's u64 arithmetic is
 * reproduced with unsigned operations: wrapping multiplication (Java's long multiplication wraps the
 * same way), logical shifts ({@code >>>}), {@link Long#remainderUnsigned}, {@link Long#divideUnsigned},
 * unsigned comparisons for {@code max} and {@code saturating_sub}.
 *
 * <p>Proportions per 50 events: 1 person, 3 auctions, 46 bids. Event time: base_time_ms + i *
 * inter_event_us / 1000.
 */
public final class NexmarkGenerator {
    static final long PERSON_PROPORTION = 1;
    static final long AUCTION_PROPORTION = 3;
    static final long TOTAL_PROPORTION = 50;
    static final long FIRST_PERSON_ID = 1000;
    static final long FIRST_AUCTION_ID = 1000;
    static final long HOT_AUCTION_RATIO = 100;
    static final long HOT_BIDDER_RATIO = 100;
    static final long NUM_CATEGORIES = 5;
    static final String[] US_STATES = {"AZ", "CA", "ID", "OR", "WA", "WY"};
    static final String[] US_CITIES = {
        "Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle",
        "Kent", "Cheyenne"
    };
    static final String[] FIRST_NAMES = {
        "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"
    };
    static final String[] LAST_NAMES = {
        "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"
    };
    static final String[] CHANNELS = {"Google", "Facebook", "Baidu", "Apple"};

    /** NexmarkConfig::default(). */
    public final long baseTimeMs;
    public final long interEventUs;
    public final long activeAuctions;
    public final long activePeople;

    public NexmarkGenerator() {
        this(1_700_000_000_000L, 100, 1000, 1000);
    }

    public NexmarkGenerator(long baseTimeMs, long interEventUs, long activeAuctions, long activePeople) {
        this.baseTimeMs = baseTimeMs;
        this.interEventUs = interEventUs;
        this.activeAuctions = activeAuctions;
        this.activePeople = activePeople;
    }

    /** splitmix64, as {@code mix} in nexmark.rs. */
    static long mix(long x) {
        x = x + 0x9e3779b97f4a7c15L;
        x = (x ^ (x >>> 30)) * 0xbf58476d1ce4e5b9L;
        x = (x ^ (x >>> 27)) * 0x94d049bb133111ebL;
        return x ^ (x >>> 31);
    }

    static long rem(long x, long m) {
        return Long.remainderUnsigned(x, m);
    }

    static long umax(long a, long b) {
        return Long.compareUnsigned(a, b) >= 0 ? a : b;
    }

    static long saturatingSub(long a, long b) {
        return Long.compareUnsigned(a, b) >= 0 ? a - b : 0;
    }

    static long saturatingMul(long a, long b) {
        if (a == 0 || b == 0) return 0;
        return Long.compareUnsigned(a, Long.divideUnsigned(-1L, b)) > 0 ? -1L : a * b;
    }

    /** Event time of event {@code index} (ms). */
    public long timeOf(long index) {
        return baseTimeMs + Long.divideUnsigned(saturatingMul(index, interEventUs), 1000);
    }

    long lastPersonId(long index) {
        long epoch = Long.divideUnsigned(index, TOTAL_PROPORTION);
        long offset = PERSON_PROPORTION - 1;
        return FIRST_PERSON_ID + epoch * PERSON_PROPORTION + offset;
    }

    long lastAuctionId(long index) {
        long epoch = Long.divideUnsigned(index, TOTAL_PROPORTION);
        long offset = rem(index, TOTAL_PROPORTION);
        if (offset < PERSON_PROPORTION) {
            return umax(saturatingSub(FIRST_AUCTION_ID + epoch * AUCTION_PROPORTION, 1), FIRST_AUCTION_ID);
        } else if (offset < PERSON_PROPORTION + AUCTION_PROPORTION) {
            offset = offset - PERSON_PROPORTION;
        } else {
            offset = AUCTION_PROPORTION - 1;
        }
        return FIRST_AUCTION_ID + epoch * AUCTION_PROPORTION + offset;
    }

    private static String pad4(long v) {
        String s = Long.toUnsignedString(v);
        switch (s.length()) {
            case 1: return "000" + s;
            case 2: return "00" + s;
            case 3: return "0" + s;
            default: return s;
        }
    }

    /** Event number {@code index}. */
    public Event event(long index) {
        long r = mix(index);
        long time = timeOf(index);
        long offset = rem(index, TOTAL_PROPORTION);
        Event e = new Event();
        if (offset < PERSON_PROPORTION) {
            Person p = new Person();
            p.id = lastPersonId(index);
            String first = FIRST_NAMES[(int) rem(r, 11)];
            String last = LAST_NAMES[(int) rem(r >>> 8, 9)];
            p.name = first + " " + last;
            p.emailAddress = p.name.replace(' ', '.') + "@" + rem(r >>> 16, 1000) + ".com";
            p.creditCard = pad4(rem(r >>> 20, 10000)) + " " + pad4(rem(r >>> 30, 10000)) + " "
                    + pad4(rem(r >>> 40, 10000)) + " " + pad4(rem(r >>> 50, 10000));
            p.city = US_CITIES[(int) rem(r >>> 12, 10)];
            p.state = US_STATES[(int) rem(r >>> 24, 6)];
            p.dateTime = time;
            e.person = p;
        } else if (offset < PERSON_PROPORTION + AUCTION_PROPORTION) {
            Auction a = new Auction();
            a.id = lastAuctionId(index);
            long lastPerson = lastPersonId(index);
            long seller;
            if (rem(r, 10) == 0) {
                seller = Long.divideUnsigned(lastPerson, HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO;
            } else {
                seller = saturatingSub(lastPerson, rem(r >>> 8, umax(activePeople, 1)));
            }
            a.seller = umax(seller, FIRST_PERSON_ID);
            a.initialBid = 100 + rem(r >>> 16, 10_000);
            a.itemName = "item-" + rem(r >>> 24, 100_000);
            a.reserve = a.initialBid + rem(r >>> 32, 10_000);
            a.dateTime = time;
            a.expires = time + 10_000 + rem(r >>> 40, 20_000);
            a.category = 10 + rem(r >>> 48, NUM_CATEGORIES);
            e.auction = a;
        } else {
            Bid b = new Bid();
            long lastAuction = lastAuctionId(index);
            long auction;
            if (rem(r, 3) != 0) {
                auction = Long.divideUnsigned(lastAuction, HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO;
            } else {
                auction = saturatingSub(lastAuction, rem(r >>> 8, umax(activeAuctions, 1)));
            }
            b.auction = umax(auction, FIRST_AUCTION_ID);
            long lastPerson = lastPersonId(index);
            long bidder;
            if (rem(r >>> 4, 4) != 0) {
                bidder = Long.divideUnsigned(lastPerson, HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1;
            } else {
                bidder = saturatingSub(lastPerson, rem(r >>> 16, umax(activePeople, 1)));
            }
            b.bidder = umax(bidder, FIRST_PERSON_ID);
            b.price = 100 + rem(r >>> 24, 100_000);
            b.channel = CHANNELS[(int) rem(r >>> 40, 4)];
            b.dateTime = time;
            e.bid = b;
        }
        return e;
    }
}
