package io.streamjob.bench;

/**
 * One Nexmark event: exactly one of {@link #person}, {@link #auction}, {@link #bid} is set (a Flink
 * POJO, so Flink uses its POJO serializer, not Kryo).
 */
public class Event {
    public Person person;
    public Auction auction;
    public Bid bid;

    public Event() {}

    public long timestamp() {
        if (bid != null) return bid.dateTime;
        if (auction != null) return auction.dateTime;
        return person.dateTime;
    }

    @Override
    public String toString() {
        if (bid != null) return bid.toString();
        if (auction != null) return auction.toString();
        return person.toString();
    }
}
