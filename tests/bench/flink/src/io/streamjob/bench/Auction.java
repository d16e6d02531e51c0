package io.streamjob.bench;

/** A new auction (Flink POJO). Mirrors nexmark.rs {@code Auction}. */
public class Auction {
    public long id;
    public String itemName;
    public long initialBid;
    public long reserve;
    public long dateTime;
    public long expires;
    public long seller;
    public long category;

    public Auction() {}

    @Override
    public String toString() {
        return "auction," + id + "," + itemName + "," + initialBid + "," + reserve + "," + dateTime
                + "," + expires + "," + seller + "," + category;
    }
}
