package io.streamjob.bench;

import java.time.Duration;

import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.functions.CoGroupFunction;
import org.apache.flink.api.common.functions.FilterFunction;
import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.assigners.SlidingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;

/**
 * The Nexmark queries on the DataStream API (keyBy / window / aggregate, keyed state in the configured
 * backend), with the semantics of our jobs. Each returns a stream of output lines' records; the
 * caller picks the sink and the line format ({@link #format}).
 */
public final class Queries {
    static final long WINDOW_MS = 10_000;
    static final long SLIDE_MS = 2_000;

    private Queries() {}

    /** q0 pass-through, q1 price in euro (price*908/1000), q2 bids with auction % 123 == 0. */
    static DataStream<Bid> simple(String query, DataStream<Event> events) {
        DataStream<Bid> bids = events.flatMap(new Bids()).name("bids");
        switch (query) {
            case "q0":
                return bids;
            case "q1":
                return bids.map(new ToEuro()).name("to-euro");
            case "q2":
                return bids.filter(new SelectAuctions()).name("select-auctions");
            default:
                throw new IllegalArgumentException("not a simple query: " + query);
        }
    }

    /**
     * q5 hot items: count bids per auction in sliding 10 s windows every 2 s (keyed by auction), then,
     * keyed by window, the auction(s) with the largest count, emitted when the watermark passes the
     * window's end.
     */
    static DataStream<AuctionCount> q5(DataStream<Event> events) {
        return events.flatMap(new Bids()).name("bids")
                .keyBy(new BidAuction())
                .window(SlidingEventTimeWindows.of(Duration.ofMillis(WINDOW_MS), Duration.ofMillis(SLIDE_MS)))
                .aggregate(new Count(), new CountWithWindow())
                .name("count-per-auction")
                .keyBy(new CountWindowEnd())
                .process(new HotItems())
                .name("hot-items");
    }

    /**
     * q7 highest bid: per tumbling 10 s window the bid(s) with the highest price; first per auction and
     * window (keyed window aggregate keeping ties), then keyed by window.
     */
    static DataStream<HighestBidLine> q7(DataStream<Event> events) {
        return events.flatMap(new Bids()).name("bids")
                .keyBy(new BidAuction())
                .window(TumblingEventTimeWindows.of(Duration.ofMillis(WINDOW_MS)))
                .aggregate(new MaxPrice(), new MaxWithWindow())
                .name("max-per-auction")
                .keyBy(new MaxWindowEnd())
                .process(new HighestBid())
                .name("highest-bid");
    }

    /**
     * q8 monitor new users: persons and auctions in the same tumbling 10 s window, joined on
     * person.id == auction.seller (keyed window co-group); one (id, name, window start) per person
     * with at least one auction in that window.
     */
    static DataStream<NewUser> q8(DataStream<Event> events) {
        DataStream<Person> persons = events.flatMap(new Persons()).name("persons");
        DataStream<Auction> auctions = events.flatMap(new Auctions()).name("auctions");
        return persons.coGroup(auctions)
                .where(new PersonId())
                .equalTo(new AuctionSeller())
                .window(TumblingEventTimeWindows.of(Duration.ofMillis(WINDOW_MS)))
                .apply(new NewUsers(), TypeInformation.of(NewUser.class))
                .name("new-users");
    }

    /** The output line of a record of any query. */
    static String format(Object record) {
        if (record instanceof Bid) return ((Bid) record).line();
        if (record instanceof AuctionCount) {
            AuctionCount c = (AuctionCount) record;
            return c.auction + "," + c.start + "," + c.end + "," + c.count;
        }
        if (record instanceof HighestBidLine) {
            HighestBidLine h = (HighestBidLine) record;
            return h.bid.line() + "," + h.windowEnd;
        }
        if (record instanceof NewUser) {
            NewUser u = (NewUser) record;
            return u.id + "," + u.name + "," + u.start;
        }
        return String.valueOf(record);
    }

    // ---- records ----

    /** Bids per auction and window (q5). */
    public static class AuctionCount {
        public long auction;
        public long start;
        public long end;
        public long count;

        public AuctionCount() {}
    }

    /** The highest-priced bids of one key and window (q7); ties kept. */
    public static class MaxBids {
        public long price = -1;
        public Bid[] bids = new Bid[0];
        public long end;

        public MaxBids() {}

        void offer(Bid b) {
            if (b.price > price) {
                price = b.price;
                bids = new Bid[] {b};
            } else if (b.price == price) {
                Bid[] more = java.util.Arrays.copyOf(bids, bids.length + 1);
                more[bids.length] = b;
                bids = more;
            }
        }
    }

    /** A person who opened an auction in a window (q8). */
    /** A highest bid of its window and the window's end (q7; the line format of ours). */
    public static class HighestBidLine {
        public Bid bid;
        public long windowEnd;

        public HighestBidLine() {}
    }

    public static class NewUser {
        public long id;
        public String name;
        public long start;

        public NewUser() {}
    }

    // ---- functions ----

    static final class Bids implements FlatMapFunction<Event, Bid> {
        @Override
        public void flatMap(Event e, Collector<Bid> out) {
            if (e.bid != null) out.collect(e.bid);
        }
    }

    static final class Persons implements FlatMapFunction<Event, Person> {
        @Override
        public void flatMap(Event e, Collector<Person> out) {
            if (e.person != null) out.collect(e.person);
        }
    }

    static final class Auctions implements FlatMapFunction<Event, Auction> {
        @Override
        public void flatMap(Event e, Collector<Auction> out) {
            if (e.auction != null) out.collect(e.auction);
        }
    }

    static final class ToEuro implements MapFunction<Bid, Bid> {
        @Override
        public Bid map(Bid b) {
            // Object reuse is on (as `mut b` on our side): change the record in place.
            b.price = b.price * 908 / 1000;
            return b;
        }
    }

    static final class SelectAuctions implements FilterFunction<Bid> {
        @Override
        public boolean filter(Bid b) {
            return Long.remainderUnsigned(b.auction, 123) == 0;
        }
    }

    static final class BidAuction implements KeySelector<Bid, Long> {
        @Override
        public Long getKey(Bid b) {
            return b.auction;
        }
    }

    static final class PersonId implements KeySelector<Person, Long> {
        @Override
        public Long getKey(Person p) {
            return p.id;
        }
    }

    static final class AuctionSeller implements KeySelector<Auction, Long> {
        @Override
        public Long getKey(Auction a) {
            return a.seller;
        }
    }

    static final class CountWindowEnd implements KeySelector<AuctionCount, Long> {
        @Override
        public Long getKey(AuctionCount c) {
            return c.end;
        }
    }

    static final class MaxWindowEnd implements KeySelector<MaxBids, Long> {
        @Override
        public Long getKey(MaxBids m) {
            return m.end;
        }
    }

    static final class Count implements AggregateFunction<Bid, Long, Long> {
        @Override
        public Long createAccumulator() {
            return 0L;
        }

        @Override
        public Long add(Bid b, Long acc) {
            return acc + 1;
        }

        @Override
        public Long getResult(Long acc) {
            return acc;
        }

        @Override
        public Long merge(Long a, Long b) {
            return a + b;
        }
    }

    static final class CountWithWindow extends ProcessWindowFunction<Long, AuctionCount, Long, TimeWindow> {
        @Override
        public void process(Long auction, Context ctx, Iterable<Long> counts, Collector<AuctionCount> out) {
            AuctionCount c = new AuctionCount();
            c.auction = auction;
            c.start = ctx.window().getStart();
            c.end = ctx.window().getEnd();
            c.count = counts.iterator().next();
            out.collect(c);
        }
    }

    /** Keyed by window end: keeps the auctions with the largest count, emits them at the end. */
    static final class HotItems extends KeyedProcessFunction<Long, AuctionCount, AuctionCount> {
        private transient ValueState<Long> max;
        private transient ListState<AuctionCount> best;

        @Override
        public void open(OpenContext ctx) {
            max = getRuntimeContext().getState(new ValueStateDescriptor<>("max-count", Types.LONG));
            best = getRuntimeContext().getListState(
                    new ListStateDescriptor<>("hot-auctions", TypeInformation.of(AuctionCount.class)));
        }

        @Override
        public void processElement(AuctionCount c, Context ctx, Collector<AuctionCount> out) throws Exception {
            Long current = max.value();
            if (current == null || c.count > current) {
                max.update(c.count);
                best.clear();
                best.add(c);
                if (current == null) ctx.timerService().registerEventTimeTimer(c.end - 1);
            } else if (c.count == current) {
                best.add(c);
            }
        }

        @Override
        public void onTimer(long ts, OnTimerContext ctx, Collector<AuctionCount> out) throws Exception {
            for (AuctionCount c : best.get()) out.collect(c);
            best.clear();
            max.clear();
        }
    }

    static final class MaxPrice implements AggregateFunction<Bid, MaxBids, MaxBids> {
        @Override
        public MaxBids createAccumulator() {
            return new MaxBids();
        }

        @Override
        public MaxBids add(Bid b, MaxBids acc) {
            acc.offer(b);
            return acc;
        }

        @Override
        public MaxBids getResult(MaxBids acc) {
            return acc;
        }

        @Override
        public MaxBids merge(MaxBids a, MaxBids b) {
            for (Bid x : b.bids) a.offer(x);
            return a;
        }
    }

    static final class MaxWithWindow extends ProcessWindowFunction<MaxBids, MaxBids, Long, TimeWindow> {
        @Override
        public void process(Long auction, Context ctx, Iterable<MaxBids> maxes, Collector<MaxBids> out) {
            MaxBids m = maxes.iterator().next();
            m.end = ctx.window().getEnd();
            out.collect(m);
        }
    }

    /** Keyed by window end: keeps the highest-priced bids over all auctions, emits them at the end. */
    static final class HighestBid extends KeyedProcessFunction<Long, MaxBids, HighestBidLine> {
        private transient ValueState<MaxBids> best;

        @Override
        public void open(OpenContext ctx) {
            best = getRuntimeContext().getState(
                    new ValueStateDescriptor<>("highest-bids", TypeInformation.of(MaxBids.class)));
        }

        @Override
        public void processElement(MaxBids m, Context ctx, Collector<HighestBidLine> out) throws Exception {
            MaxBids current = best.value();
            if (current == null) {
                ctx.timerService().registerEventTimeTimer(m.end - 1);
                best.update(m);
                return;
            }
            if (m.price < current.price) return;
            for (Bid b : m.bids) current.offer(b);
            best.update(current);
        }

        @Override
        public void onTimer(long ts, OnTimerContext ctx, Collector<HighestBidLine> out) throws Exception {
            MaxBids m = best.value();
            if (m != null) {
                for (Bid b : m.bids) {
                    HighestBidLine line = new HighestBidLine();
                    line.bid = b;
                    line.windowEnd = m.end;
                    out.collect(line);
                }
            }
            best.clear();
        }
    }

    static final class NewUsers implements CoGroupFunction<Person, Auction, NewUser> {
        @Override
        public void coGroup(Iterable<Person> persons, Iterable<Auction> auctions, Collector<NewUser> out) {
            if (!auctions.iterator().hasNext()) return;
            java.util.Set<Long> seen = new java.util.HashSet<>();
            for (Person p : persons) {
                if (!seen.add(p.id)) continue;
                NewUser u = new NewUser();
                u.id = p.id;
                u.name = p.name;
                u.start = p.dateTime - Math.floorMod(p.dateTime, WINDOW_MS);
                out.collect(u);
            }
        }
    }
}
