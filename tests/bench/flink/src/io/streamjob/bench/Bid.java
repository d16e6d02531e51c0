package io.streamjob.bench;

/** A bid on an auction (Flink POJO). Mirrors nexmark.rs {@code Bid}. */
public class Bid {
    public long auction;
    public long bidder;
    public long price;
    public String channel;
    public long dateTime;

    public Bid() {}

    /** The line our file sink writes for a bid: {@code auction,bidder,price,channel,date_time}. */
    public String line() {
        return auction + "," + bidder + "," + price + "," + channel + "," + dateTime;
    }

    @Override
    public String toString() {
        return "bid," + line();
    }
}
